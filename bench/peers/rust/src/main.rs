//! The Rust peer of the four-stack benchmark (bench/peers.py): trackpoint's default impression contract as a Rust
//! team would write it, with hyper and a current-thread tokio runtime.
//!
//! GET|HEAD /i?imp=..&cid=..&crid=..&pub=..: imp required, every field at most 64 bytes of UTF-8 without control
//! characters (an invalid optional value is left out and named in dims.invalid, as a pixel does); the id is
//! trackpoint's (BLAKE2b-128 of "impression\x1f<imp>"); one JSON line per accepted request to a
//! buffered log (256 KiB, flushed every 100 ms); the 43-byte GIF, or 400 with trackpoint's reason, 404, 405.

use std::cell::RefCell;
use std::convert::Infallible;
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hyper::server::conn::Http;
use hyper::service::service_fn;
use hyper::{Body, Method, Request, Response, StatusCode};

const GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff\x21\xf9\x04\x01\x00\x00\x00\x00\x2c\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02\x44\x01\x00\x3b";
const MAX_LEN: usize = 64;
const OPTIONAL: [&str; 3] = ["cid", "crid", "pub"];
const NO_STORE: &str = "no-store, no-cache, must-revalidate, max-age=0";

type Log = Rc<RefCell<BufWriter<File>>>;

fn reject(status: StatusCode, reason: &'static str, field: Option<&str>) -> Response<Body> {
    let body = match field {
        Some(field) => format!(r#"{{"error":"{reason}","field":"{field}"}}"#),
        None => format!(r#"{{"error":"{reason}"}}"#),
    };
    let mut response = Response::builder()
        .status(status)
        .header("X-Reject-Reason", reason)
        .header("Content-Type", "application/json")
        .header("Cache-Control", NO_STORE);
    if status == StatusCode::METHOD_NOT_ALLOWED {
        response = response.header("Allow", "GET, HEAD");
    }
    response.body(Body::from(body)).expect("a valid response")
}

/// None for a clean value (at most `limit` bytes, no control characters; it is UTF-8 already), else the reason.
fn check(value: &str, limit: usize) -> Option<&'static str> {
    if value.len() > limit {
        return Some("field_too_long");
    }
    if value.bytes().any(|b| b < 0x20 || b == 0x7f) {
        return Some("invalid_field");
    }
    None
}

fn push_json_string(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
}

/// The first 24 bits of an IPv4 address, the first 48 of an IPv6 one (trackpoint's anonymize_ip).
fn truncate(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.0")
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => truncate(IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                std::net::Ipv6Addr::new(s[0], s[1], s[2], 0, 0, 0, 0, 0).to_string()
            }
        },
    }
}

fn impression(request: &Request<Body>, peer: IpAddr, log: &Log) -> Response<Body> {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        return reject(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", None);
    }
    let query = request.uri().query().unwrap_or("").as_bytes();
    let (mut imp, mut optional): (Option<String>, [Option<String>; 3]) = (None, [None, None, None]);
    for (key, value) in form_urlencoded::parse(query) {
        // form_urlencoded replaces bytes that are not UTF-8 with U+FFFD; trackpoint refuses them
        if key == "imp" && value.contains('\u{fffd}') {
            return reject(StatusCode::BAD_REQUEST, "invalid_encoding", Some(&key));
        }
        if key == "imp" {
            imp.get_or_insert_with(|| value.into_owned());
        } else if let Some(index) = OPTIONAL.iter().position(|name| key == *name) {
            optional[index].get_or_insert_with(|| value.into_owned());
        }
    }
    let imp = match imp {
        Some(imp) if !imp.is_empty() => imp,
        _ => return reject(StatusCode::BAD_REQUEST, "missing_field", Some("imp")),
    };
    if let Some(reason) = check(&imp, MAX_LEN) {
        return reject(StatusCode::BAD_REQUEST, reason, Some("imp"));
    }
    let mut invalid = String::new();
    for (name, value) in OPTIONAL.iter().zip(optional.iter_mut()) {
        let reason = match value.as_deref() {
            Some(value) if value.contains('\u{fffd}') => Some("invalid_encoding"),
            Some(value) => check(value, MAX_LEN),
            None => None,
        };
        if let Some(reason) = reason {
            if !invalid.is_empty() {
                invalid.push(',');
            }
            let _ = write!(invalid, "{name}:{reason}");
            *value = None;
        }
    }
    if method == Method::GET {
        let id = blake2b_simd::Params::new()
            .hash_length(16)
            .to_state()
            .update(b"impression\x1f")
            .update(imp.as_bytes())
            .finalize();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let ua = request
            .headers()
            .get("user-agent")
            .and_then(|value| std::str::from_utf8(value.as_bytes()).ok())
            .filter(|ua| check(ua, usize::MAX).is_none())
            .unwrap_or("");
        let mut line = String::with_capacity(320);
        let _ = write!(
            line,
            r#"{{"id":"{}","type":"impression","ts":{ts},"dims":{{"imp":"#,
            id.to_hex()
        );
        push_json_string(&mut line, &imp);
        for (name, value) in OPTIONAL.iter().zip(&optional) {
            if let Some(value) = value.as_deref().filter(|value| !value.is_empty()) {
                let _ = write!(line, r#","{name}":"#);
                push_json_string(&mut line, value);
            }
        }
        if !invalid.is_empty() {
            line.push_str(r#","invalid":"#);
            push_json_string(&mut line, &invalid);
        }
        let _ = write!(line, r#"}},"ctx":{{"ip":"{}","ua":"#, truncate(peer));
        push_json_string(&mut line, ua);
        line.push_str("}}\n");
        if log.borrow_mut().write_all(line.as_bytes()).is_err() {
            return reject(StatusCode::SERVICE_UNAVAILABLE, "log_unavailable", None);
        }
    }
    Response::builder()
        .header("Content-Type", "image/gif")
        .header("Cache-Control", NO_STORE)
        .header("Content-Length", "43")
        .body(Body::from(GIF))
        .expect("a valid response")
}

fn main() {
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()
        .expect("an address");
    let path = args.next().unwrap_or_else(|| "events.jsonl".into());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .expect("the log file");
        let log: Log = Rc::new(RefCell::new(BufWriter::with_capacity(256 << 10, file)));
        let flusher = log.clone();
        tokio::task::spawn_local(async move {
            let mut every = tokio::time::interval(Duration::from_millis(100));
            loop {
                every.tick().await;
                flusher.borrow_mut().flush().expect("the log is writable");
            }
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .expect("the address is free");
        let http = Http::new().with_executor(LocalExec);
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let _ = stream.set_nodelay(true);
            let log = log.clone();
            let http = http.clone();
            tokio::task::spawn_local(async move {
                let service = service_fn(move |request: Request<Body>| {
                    let response = if request.uri().path() == "/i" {
                        impression(&request, peer.ip(), &log)
                    } else {
                        reject(StatusCode::NOT_FOUND, "not_found", None)
                    };
                    async move { Ok::<_, Infallible>(response) }
                });
                let _ = http.serve_connection(stream, service).await;
            });
        }
    });
}

/// Runs hyper's background tasks on the current thread (the service is not Send: it shares the log through Rc).
#[derive(Clone, Copy)]
struct LocalExec;

impl<F: std::future::Future + 'static> hyper::rt::Executor<F> for LocalExec {
    fn execute(&self, future: F) {
        tokio::task::spawn_local(future);
    }
}
