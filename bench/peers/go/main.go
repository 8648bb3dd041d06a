// The Go peer of the four-stack benchmark (bench/peers.py): trackpoint's default impression contract written the
// way a Go team would write it, with net/http and the standard library only (GOMAXPROCS=1).
//
// GET|HEAD /i?imp=..&cid=..&crid=..&pub=..: imp required, every field at most 64 bytes of UTF-8 without control
// characters; an invalid optional value is left out and named in dims.invalid ("crid:field_too_long"), as a pixel
// does; the id is trackpoint's (BLAKE2b-128 of "impression\x1f<imp>"); one JSON line per accepted request goes to a
// buffered log (flushed when 256 KiB fill or every 100 ms); the answer is the 43-byte GIF, or 400 with the reason
// as trackpoint words it, 404, 405.
package main

import (
	"bufio"
	"encoding/hex"
	"flag"
	"log"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"
)

var gif = []byte("GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b")

const maxLen = 64

var optional = [...]string{"cid", "crid", "pub"}

type eventLog struct {
	mu  sync.Mutex
	out *bufio.Writer
	buf []byte
}

func (l *eventLog) flushEvery(period time.Duration) {
	for range time.Tick(period) {
		l.mu.Lock()
		if err := l.out.Flush(); err != nil {
			log.Fatalf("log: %v", err)
		}
		l.mu.Unlock()
	}
}

func reject(w http.ResponseWriter, status int, reason, field string) {
	h := w.Header()
	h["X-Reject-Reason"] = []string{reason}
	h["Content-Type"] = []string{"application/json"}
	h["Cache-Control"] = []string{"no-store, no-cache, must-revalidate, max-age=0"}
	body := `{"error":"` + reason + `"`
	if field != "" {
		body += `,"field":"` + field + `"`
	}
	w.WriteHeader(status)
	w.Write([]byte(body + "}"))
}

// check: "" for a value of at most maxLen bytes of UTF-8 without control characters; the reason otherwise.
func check(value string) string {
	if len(value) > maxLen {
		return "field_too_long"
	}
	return checkText(value)
}

func checkText(value string) string {
	if !utf8.ValidString(value) {
		return "invalid_encoding"
	}
	for i := 0; i < len(value); i++ {
		if value[i] < 0x20 || value[i] == 0x7f {
			return "invalid_field"
		}
	}
	return ""
}

// appendString appends value as a JSON string (value is valid UTF-8 without control characters).
func appendString(b []byte, value string) []byte {
	b = append(b, '"')
	for i := 0; i < len(value); i++ {
		c := value[i]
		if c == '"' || c == '\\' {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return append(b, '"')
}

// truncate keeps the first 24 bits of an IPv4 address and 48 of an IPv6 one, as trackpoint's anonymize_ip does.
func truncate(remote string) string {
	host, _, err := net.SplitHostPort(remote)
	if err != nil {
		return ""
	}
	ip := net.ParseIP(host)
	if ip4 := ip.To4(); ip4 != nil {
		return net.IP(ip4.Mask(net.CIDRMask(24, 32))).String()
	}
	return ip.Mask(net.CIDRMask(48, 128)).String()
}

func (l *eventLog) impression(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		w.Header()["Allow"] = []string{"GET, HEAD"}
		reject(w, http.StatusMethodNotAllowed, "method_not_allowed", "")
		return
	}
	query, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		reject(w, http.StatusBadRequest, "invalid_encoding", "")
		return
	}
	imp := query.Get("imp")
	if imp == "" {
		reject(w, http.StatusBadRequest, "missing_field", "imp")
		return
	}
	if reason := check(imp); reason != "" {
		reject(w, http.StatusBadRequest, reason, "imp")
		return
	}
	var values [len(optional)]string
	invalid := ""
	for i, name := range optional {
		value := query.Get(name)
		if reason := check(value); reason != "" {
			if invalid != "" {
				invalid += ","
			}
			invalid += name + ":" + reason
			continue
		}
		values[i] = value
	}
	id := blake2b128([]byte("impression\x1f" + imp))
	if r.Method == http.MethodGet {
		l.mu.Lock()
		b := l.buf[:0]
		b = append(b, `{"id":"`...)
		var digits [32]byte
		hex.Encode(digits[:], id[:])
		b = append(b, digits[:]...)
		b = append(b, `","type":"impression","ts":`...)
		b = strconv.AppendInt(b, time.Now().UnixMilli(), 10)
		b = append(b, `,"dims":{"imp":`...)
		b = appendString(b, imp)
		for i, name := range optional {
			if value := values[i]; value != "" {
				b = append(b, ',', '"')
				b = append(b, name...)
				b = append(b, '"', ':')
				b = appendString(b, value)
			}
		}
		if invalid != "" {
			b = append(b, `,"invalid":`...)
			b = appendString(b, invalid)
		}
		b = append(b, `},"ctx":{"ip":`...)
		b = appendString(b, truncate(r.RemoteAddr))
		b = append(b, `,"ua":`...)
		ua := r.UserAgent()
		if checkText(ua) != "" { // a user agent that is not clean UTF-8 is not logged
			ua = ""
		}
		b = appendString(b, ua)
		b = append(b, "}}\n"...)
		_, err = l.out.Write(b)
		l.buf = b
		l.mu.Unlock()
		if err != nil {
			reject(w, http.StatusServiceUnavailable, "log_unavailable", "")
			return
		}
	}
	h := w.Header()
	h["Content-Type"] = []string{"image/gif"}
	h["Cache-Control"] = []string{"no-store, no-cache, must-revalidate, max-age=0"}
	h["Content-Length"] = []string{"43"}
	w.Write(gif)
}

func main() {
	listen := flag.String("listen", "127.0.0.1:8080", "address to serve")
	logPath := flag.String("log", "events.jsonl", "the event log")
	flag.Parse()
	file, err := os.OpenFile(*logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		log.Fatal(err)
	}
	events := &eventLog{out: bufio.NewWriterSize(file, 256<<10), buf: make([]byte, 0, 1024)}
	go events.flushEvery(100 * time.Millisecond)
	mux := http.NewServeMux()
	mux.HandleFunc("/i", events.impression)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		reject(w, http.StatusNotFound, "not_found", "")
	})
	server := &http.Server{Addr: *listen, Handler: mux, ReadHeaderTimeout: 10 * time.Second, IdleTimeout: 75 * time.Second}
	log.Fatal(server.ListenAndServe())
}
