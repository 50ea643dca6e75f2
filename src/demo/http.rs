//! The demo worker's HTTP/1.1 request parser and response writer.
//!
//! Hand-written on purpose: the demo worker is also the throughput benchmark app, so it must
//! be cheap per request and have no dependency beyond the crate's, and it only needs what a
//! load balancer-free loopback benchmark sends: a request line, headers, an optional
//! `Content-Length` body to skip. Anything fancier (chunked bodies, obs-fold) is refused
//! rather than half-supported.
//!
//! # References
//! RFC 9112 (HTTP/1.1 message syntax), §2.2 (leading empty lines), §6.3 (body length),
//! §9.3 (persistence).

use std::fmt;
use std::io::Write as _;

/// Largest request head (request line + headers + the blank line) we accept: beyond it the
/// client gets 431 and the connection is closed. Bounds the per-connection buffer.
pub(crate) const MAX_HEAD: usize = 16 * 1024;

/// One parsed request head, borrowing from the connection's read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Request<'a> {
    /// The method token as sent (`GET`, `HEAD`, ...).
    pub method: &'a str,
    /// The path part of the origin-form target, without the query.
    pub path: &'a str,
    /// The query string after `?`, if any (without the `?`).
    pub query: Option<&'a str>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Whether the client wants the connection kept open after the response: HTTP/1.1
    /// defaults to yes unless `Connection: close`; HTTP/1.0 defaults to no unless
    /// `Connection: keep-alive`.
    pub keep_alive: bool,
    /// Length of the body that follows the head, to be read and discarded.
    pub content_length: u64,
    /// A `Transfer-Encoding` header was present: we cannot frame the body, so the caller
    /// answers 501 and closes.
    pub has_transfer_encoding: bool,
}

impl<'a> Request<'a> {
    /// Value of the query parameter `name`, if present (no percent-decoding: the demo's
    /// parameters are plain integers).
    pub fn query_param(&self, name: &str) -> Option<&'a str> {
        self.query?.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then_some(v)
        })
    }
}

/// Outcome of trying to parse a request head out of the bytes received so far.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed<'a> {
    /// A complete head; `head_len` bytes of the buffer (including any leading empty lines)
    /// belong to it, the body (if any) starts right after.
    Complete { request: Request<'a>, head_len: usize },
    /// Not enough bytes yet: read more and try again.
    Partial,
}

/// Why a request head was refused; each maps to the status the client gets before the
/// connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ParseError {
    /// The head exceeds [`MAX_HEAD`]: 431.
    HeadTooLarge,
    /// The head is malformed: 400, with a short reason for the body.
    Malformed(&'static str),
}

impl ParseError {
    /// Status code and reason phrase to answer with.
    pub fn status(self) -> (u16, &'static str) {
        match self {
            ParseError::HeadTooLarge => (431, "Request Header Fields Too Large"),
            ParseError::Malformed(_) => (400, "Bad Request"),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ParseError::HeadTooLarge => write!(f, "request head larger than {MAX_HEAD} bytes"),
            ParseError::Malformed(why) => f.write_str(why),
        }
    }
}

/// Parses one request head from the start of `buf`.
///
/// Pipelined requests are handled by the caller: it consumes `head_len` (+ body) bytes and
/// calls this again on the rest.
pub(crate) fn parse_request(buf: &[u8]) -> Result<Parsed<'_>, ParseError> {
    // RFC 9112 §2.2: a server SHOULD ignore empty lines received before the request line
    // (some clients send an extra CRLF after a POST body).
    let mut skip = 0;
    while buf[skip..].starts_with(b"\r\n") {
        skip += 2;
    }
    let rest = &buf[skip..];
    let window = &rest[..rest.len().min(MAX_HEAD + 4)];
    let Some(end) = find_head_end(window) else {
        // Counted on the whole buffer, skipped empty lines included, so a client sending
        // nothing but CRLFs cannot grow the buffer without bound either.
        if buf.len() >= MAX_HEAD {
            return Err(ParseError::HeadTooLarge);
        }
        return Ok(Parsed::Partial);
    };
    // `end` is the index of the blank line's "\r\n\r\n"; the head includes it.
    let head_len = end + 4;
    if skip + head_len > MAX_HEAD {
        return Err(ParseError::HeadTooLarge);
    }
    let head = std::str::from_utf8(&rest[..end]).map_err(|_| ParseError::Malformed("request head is not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let (method, target, minor_version) = parse_request_line(request_line)?;
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };

    let mut wants_close = false;
    let mut wants_keep_alive = false;
    let mut content_length: Option<u64> = None;
    let mut has_transfer_encoding = false;
    for line in lines {
        if line.starts_with([' ', '\t']) {
            // obs-fold: RFC 9112 §5.2 lets a server reject it with 400.
            return Err(ParseError::Malformed("obsolete header line folding"));
        }
        let (name, value) = line.split_once(':').ok_or(ParseError::Malformed("header line without ':'"))?;
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace()) {
            return Err(ParseError::Malformed("invalid header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    wants_close = true;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    wants_keep_alive = true;
                }
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::Malformed("invalid Content-Length"));
            }
            let n: u64 = value.parse().map_err(|_| ParseError::Malformed("invalid Content-Length"))?;
            // Differing duplicates are a request-smuggling vector: refuse (RFC 9112 §6.3).
            if content_length.is_some_and(|prev| prev != n) {
                return Err(ParseError::Malformed("conflicting Content-Length"));
            }
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            has_transfer_encoding = true;
        }
    }

    let keep_alive = if minor_version == 1 { !wants_close } else { wants_keep_alive && !wants_close };
    Ok(Parsed::Complete {
        request: Request {
            method,
            path,
            query,
            minor_version,
            keep_alive,
            content_length: content_length.unwrap_or(0),
            has_transfer_encoding,
        },
        head_len: skip + head_len,
    })
}

/// Index of the first `\r\n\r\n` in `buf`.
fn find_head_end(buf: &[u8]) -> Option<usize> {
    // A plain scan: heads are small, and memchr-style tricks are not worth a dependency.
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Splits `METHOD SP target SP HTTP/1.x`.
fn parse_request_line(line: &str) -> Result<(&str, &str, u8), ParseError> {
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ParseError::Malformed("malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ParseError::Malformed("invalid method"));
    }
    if !target.starts_with('/') {
        return Err(ParseError::Malformed("request target must be a path"));
    }
    let minor = match version {
        "HTTP/1.1" => 1,
        "HTTP/1.0" => 0,
        _ => return Err(ParseError::Malformed("unsupported HTTP version")),
    };
    Ok((method, target, minor))
}

/// How the response ends the exchange, which decides the `Connection` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Persistence {
    /// Keep the connection; HTTP/1.0 clients need to be told explicitly.
    KeepAlive { http10: bool },
    /// Close after this response (`Connection: close`).
    Close,
}

/// Appends a complete response (head and body) to `out`, so the caller sends it in one write.
///
/// `head_only` answers a HEAD request: the same headers, no body.
pub(crate) fn write_response(
    out: &mut Vec<u8>,
    status: u16,
    reason: &str,
    content_type: &str,
    body: &[u8],
    persistence: Persistence,
    head_only: bool,
) {
    // Writing into a Vec cannot fail: the io::Result is always Ok.
    let _ =
        write!(out, "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n", body.len());
    match persistence {
        Persistence::Close => out.extend_from_slice(b"Connection: close\r\n"),
        Persistence::KeepAlive { http10: true } => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        Persistence::KeepAlive { http10: false } => {}
    }
    out.extend_from_slice(b"\r\n");
    if !head_only {
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(buf: &[u8]) -> (Request<'_>, usize) {
        match parse_request(buf) {
            Ok(Parsed::Complete { request, head_len }) => (request, head_len),
            other => panic!("expected a complete request, got {other:?}"),
        }
    }

    #[test]
    fn simple_get() {
        let buf = b"GET /sleep?ms=30&x=1 HTTP/1.1\r\nHost: x\r\n\r\n";
        let (req, len) = complete(buf);
        assert_eq!(len, buf.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/sleep");
        assert_eq!(req.query_param("ms"), Some("30"));
        assert_eq!(req.query_param("x"), Some("1"));
        assert_eq!(req.query_param("y"), None);
        assert!(req.keep_alive);
        assert_eq!(req.content_length, 0);
    }

    #[test]
    fn pipelined_requests_parse_one_after_the_other() {
        let buf = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET /c HTTP/1.1\r\nConnection: close\r\n\r\n";
        let (a, la) = complete(buf);
        assert_eq!(a.path, "/a");
        let (b, lb) = complete(&buf[la..]);
        assert_eq!(b.path, "/b");
        assert_eq!(b.content_length, 3);
        let after_body = la + lb + 3;
        let (c, lc) = complete(&buf[after_body..]);
        assert_eq!(c.path, "/c");
        assert!(!c.keep_alive);
        assert_eq!(after_body + lc, buf.len());
    }

    #[test]
    fn split_reads_are_partial_until_the_blank_line() {
        let full = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse_request(&full[..cut]), Ok(Parsed::Partial), "cut at {cut}");
        }
        let (req, len) = complete(full);
        assert_eq!((req.path, len), ("/", full.len()));
    }

    #[test]
    fn leading_empty_lines_are_skipped() {
        let buf = b"\r\n\r\nGET /x HTTP/1.1\r\n\r\n";
        let (req, len) = complete(buf);
        assert_eq!(req.path, "/x");
        assert_eq!(len, buf.len());
    }

    #[test]
    fn oversized_head_is_431() {
        let mut buf = b"GET / HTTP/1.1\r\n".to_vec();
        while buf.len() < MAX_HEAD + 10 {
            buf.extend_from_slice(b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        // Without the terminator: too large as soon as the limit is passed.
        assert_eq!(parse_request(&buf), Err(ParseError::HeadTooLarge));
        // With the terminator beyond the limit: still too large.
        buf.extend_from_slice(b"\r\n");
        assert_eq!(parse_request(&buf), Err(ParseError::HeadTooLarge));
        assert_eq!(ParseError::HeadTooLarge.status().0, 431);
        // Just under the limit: fine.
        let mut ok = b"GET / HTTP/1.1\r\nX: ".to_vec();
        ok.resize(MAX_HEAD - 4, b'a');
        ok.extend_from_slice(b"\r\n\r\n");
        assert_eq!(ok.len(), MAX_HEAD);
        complete(&ok);
    }

    #[test]
    fn connection_header_handling() {
        let (r, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.1\r\nconnection: Keep-Alive, Upgrade\r\n\r\n");
        assert!(r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.1\r\nCONNECTION:  upgrade, CLOSE \r\n\r\n");
        assert!(!r.keep_alive);
    }

    #[test]
    fn http10_closes_unless_keep_alive() {
        let (r, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert_eq!(r.minor_version, 0);
        assert!(!r.keep_alive);
        let (r, _) = complete(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(r.keep_alive);
    }

    #[test]
    fn malformed_heads_are_400() {
        for bad in [
            &b"GET /\r\n\r\n"[..],
            b"GET / HTTP/1.1 extra\r\n\r\n",
            b"GET / HTTP/2.0\r\n\r\n",
            b"GET http://x/ HTTP/1.1\r\n\r\n",
            b"G3T / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n",
            b"GET / HTTP/1.1\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nA: b\r\n folded\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
            b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n",
        ] {
            match parse_request(bad) {
                Err(e @ ParseError::Malformed(_)) => assert_eq!(e.status().0, 400),
                other => panic!("{:?} parsed as {other:?}", String::from_utf8_lossy(bad)),
            }
        }
        // Identical duplicates are tolerated.
        let (r, _) = complete(b"GET / HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n");
        assert_eq!(r.content_length, 2);
    }

    #[test]
    fn transfer_encoding_is_flagged() {
        let (r, _) = complete(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert!(r.has_transfer_encoding);
    }

    #[test]
    fn response_has_length_and_connection_headers() {
        let mut out = Vec::new();
        write_response(&mut out, 200, "OK", "text/plain", b"hi\n", Persistence::Close, false);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nConnection: close\r\n\r\nhi\n"
        );
        out.clear();
        write_response(&mut out, 404, "Not Found", "text/plain", b"x", Persistence::KeepAlive { http10: true }, true);
        assert_eq!(
            out,
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\nContent-Length: 1\r\nConnection: keep-alive\r\n\r\n"
        );
    }
}
