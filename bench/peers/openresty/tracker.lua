-- The OpenResty peer of the four-stack benchmark (bench/peers.py): trackpoint's default impression contract as an
-- OpenResty team would write it, in Lua on Debian's nginx with lua-nginx-module (LuaJIT) and lua-cjson.
--
-- GET|HEAD /i?imp=..&cid=..&crid=..&pub=..: imp required, every field at most 64 bytes of UTF-8 without control
-- characters (an invalid optional value is left out and named in dims.invalid, as a pixel does); the id is trackpoint's (BLAKE2b-128 of "impression\x1f<imp>", through LuaJIT's FFI into libsodium,
-- whose crypto_generichash is BLAKE2b); one JSON line per accepted request to a buffered log (Lua's stdio buffer,
-- 256 KiB, flushed every 100 ms by a timer); the 43-byte GIF, or 400 with trackpoint's reason, 404, 405.
local ffi = require "ffi"
local cjson = require "cjson"
local ngx = ngx
local find, format = string.find, string.format

ffi.cdef [[
int sodium_init(void);
unsigned char *ngx_hex_dump(unsigned char *dst, const unsigned char *src, size_t len);
int crypto_generichash(unsigned char *out, size_t outlen, const unsigned char *in, unsigned long long inlen,
                       const unsigned char *key, size_t keylen);
]]
local sodium = ffi.load("sodium.so.23")
assert(sodium.sodium_init() >= 0, "sodium_init failed")
local digest = ffi.new("unsigned char[16]")
local digits = ffi.new("unsigned char[32]")

local GIF = "GIF89a\1\0\1\0\128\0\0\0\0\0\255\255\255\33\249\4\1\0\0\0\0\44\0\0\0\0\1\0\1\0\0\2\2\68\1\0\59"
local MAX_LEN = 64
local OPTIONAL = { "cid", "crid", "pub" }
local NO_STORE = "no-store, no-cache, must-revalidate, max-age=0"

local M = {}
local log

function M.open(path)
  log = assert(io.open(path, "a"))
  log:setvbuf("full", 256 * 1024)
  ngx.timer.every(0.1, function() log:flush() end)
end

local function reject(status, reason, field)
  ngx.status = status
  ngx.header["X-Reject-Reason"] = reason
  ngx.header["Content-Type"] = "application/json"
  ngx.header["Cache-Control"] = NO_STORE
  if field then
    ngx.print('{"error":"', reason, '","field":"', field, '"}')
  else
    ngx.print('{"error":"', reason, '"}')
  end
  return ngx.exit(status)
end

-- nil for a clean value (a string of at most MAX_LEN bytes of UTF-8 without control characters), else the reason
local function check(value, limit)
  if type(value) ~= "string" then
    return "invalid_field" -- a repeated parameter (a table) or one without '=' (true)
  end
  if limit and #value > limit then
    return "field_too_long"
  end
  if find(value, "[%z\1-\31\127]") then
    return "invalid_field"
  end
  if not ngx.re.find(value, [[^(?:[\x00-\x7f]|[\xc2-\xdf][\x80-\xbf]|\xe0[\xa0-\xbf][\x80-\xbf]|[\xe1-\xec\xee\xef][\x80-\xbf]{2}|\xed[\x80-\x9f][\x80-\xbf]|\xf0[\x90-\xbf][\x80-\xbf]{2}|[\xf1-\xf3][\x80-\xbf]{3}|\xf4[\x80-\x8f][\x80-\xbf]{2})*$]], "jo") then
    return "invalid_encoding"
  end
  return nil
end

local function truncate(ip)
  local a, b, c = ip:match("^(%d+)%.(%d+)%.(%d+)%.%d+$")
  if a then
    return a .. "." .. b .. "." .. c .. ".0"
  end
  local h1, h2, h3 = ip:match("^(%x*):(%x*):(%x*)")
  if h1 then
    return format("%s:%s:%s::", h1, h2, h3)
  end
  return ""
end

local function hex(ptr, n) -- nginx's own hex dump, as lua-resty-string's to_hex calls it
  ffi.C.ngx_hex_dump(digits, ptr, n)
  return ffi.string(digits, n * 2)
end

function M.impression()
  local method = ngx.req.get_method()
  if method ~= "GET" and method ~= "HEAD" then
    ngx.header["Allow"] = "GET, HEAD"
    return reject(405, "method_not_allowed")
  end
  local args = ngx.req.get_uri_args(32)
  local imp = args.imp
  if imp == nil or imp == "" then
    return reject(400, "missing_field", "imp")
  end
  local reason = check(imp, MAX_LEN)
  if reason then
    return reject(400, reason, "imp")
  end
  local dims = { imp = imp }
  local invalid
  for _, name in ipairs(OPTIONAL) do
    local value = args[name]
    if value ~= nil and value ~= "" then
      reason = check(value, MAX_LEN)
      if reason then
        invalid = (invalid and invalid .. "," or "") .. name .. ":" .. reason
      else
        dims[name] = value
      end
    end
  end
  dims.invalid = invalid
  if method == "GET" then
    local material = "impression\31" .. imp
    sodium.crypto_generichash(digest, 16, material, #material, nil, 0)
    local ua = ngx.var.http_user_agent or ""
    if check(ua) then
      ua = ""
    end
    local line = cjson.encode({
      id = hex(digest, 16),
      type = "impression",
      ts = math.floor(ngx.now() * 1000),
      dims = dims,
      ctx = { ip = truncate(ngx.var.remote_addr), ua = ua },
    })
    local ok = log:write(line, "\n")
    if not ok then
      return reject(503, "log_unavailable")
    end
  end
  ngx.header["Content-Type"] = "image/gif"
  ngx.header["Cache-Control"] = NO_STORE
  ngx.header["Content-Length"] = 43
  ngx.print(GIF)
end

function M.not_found()
  return reject(404, "not_found")
end

return M
