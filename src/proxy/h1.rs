//! The upstream side of a proxied request: an HTTP/1.1 client connection
//! driven from the request's own task. hyper's client runs each
//! connection as a task of its own, fed through channels (the request
//! queue, a oneshot for the response, a channel for the body): three
//! hand-overs and three extra polls a request. Here the request's future
//! writes the head and the upload and reads the response head; the
//! response body, which the client connection's task polls, reads the
//! rest from the socket itself (and finishes an upload still going).
//!
//! The framing rules are RFC 9112's: a response to `HEAD`, a `1xx`, `204`
//! or `304` has no body; `Transfer-Encoding` ending in `chunked` wins over
//! `Content-Length` (the connection is then not reused); a body with
//! neither runs until the upstream closes; differing or invalid lengths are
//! an error. Interim `1xx` answers are dropped, as nginx does; `101` hands
//! the connection over to the protocol switch. A connection is reused only
//! when both messages ended cleanly and the upstream asked for nothing else
//! (HTTP/1.1 without `Connection: close`, or HTTP/1.0 with `keep-alive`).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};
use http_body::{Body as HttpBody, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::headers::connection_has_token;
use super::upstream::SentBody;
use crate::body::BoxError;

/// The longest response head read (nginx's `proxy_buffer_size` is 4-8 KiB).
const MAX_HEAD: usize = 64 * 1024;
const MAX_HEADERS: usize = 100;
/// The longest chunk-size line (with extensions), and all trailers together.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 64 * 1024;
/// Bytes asked of the socket at a time.
const READ_SIZE: usize = 8 * 1024;

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading from or writing to the upstream failed")]
    Io(#[from] io::Error),
    #[error("the upstream closed the connection before a whole response head")]
    Closed,
    #[error("the upstream's response head is larger than {MAX_HEAD} bytes")]
    HeadTooLarge,
    #[error("the upstream's response head is malformed")]
    Parse(#[from] httparse::Error),
    #[error("the upstream's response is malformed: {0}")]
    Malformed(&'static str),
    /// The client's request body failed; the cause says how.
    #[error("the request body could not be relayed")]
    Upload(#[source] BoxError),
}

impl Error {
    /// A reused connection that turned out closed before anything came
    /// back: nothing was answered, so the request may go on a new one.
    fn is_stale(&self) -> bool {
        match self {
            Error::Closed => true,
            Error::Io(e) => matches!(
                e.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::UnexpectedEof
            ),
            _ => false,
        }
    }
}

/// A plain or TLS connection to the upstream.
pub enum Io {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Io {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_write(cx, b),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, b),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_flush(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Io::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Io::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// One connection: the socket and what was read from it but not used yet.
pub struct Conn {
    pub io: Io,
    pub buf: BytesMut,
}

impl Conn {
    pub fn new(io: Io) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can take a request: the upstream has
    /// neither closed it nor written anything since its last response.
    /// Costs no system call unless the socket was reported readable.
    pub fn is_usable_when_idle(&self) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut cx = Context::from_waker(Waker::noop());
        match &self.io {
            Io::Plain(tcp) => match tcp.poll_read_ready(&mut cx) {
                Poll::Pending => true,
                Poll::Ready(Err(_)) => false,
                // Readable: an end of stream, stray bytes, or a readiness
                // left from before; only the last is fine.
                Poll::Ready(Ok(())) => {
                    let mut probe = [0u8; 1];
                    matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
                }
            },
            // TLS records may arrive unasked (session tickets); a readable
            // idle TLS connection is simply not reused.
            Io::Tls(tls) => tls.get_ref().0.poll_read_ready(&mut cx).is_pending(),
        }
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_SIZE / 2 {
            self.buf.reserve(READ_SIZE);
        }
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)
    }
}

/// A request as it goes out: its request line's parts and what writes its
/// header lines (`name: value\r\n` each; the framing headers excepted,
/// which [`Upload`] adds).
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub method: &'a Method,
    /// In origin form (`/path?query`).
    pub target: &'a http::uri::PathAndQuery,
    /// The request's headers declare its body's length (`Content-Length`),
    /// and the header lines carry it.
    pub has_length: bool,
    pub headers: &'a (dyn Fn(&mut Vec<u8>) + Sync),
}

/// How the request body goes out.
enum UploadFraming {
    /// As the client's `Content-Length` (or the body's exact size) says.
    Length,
    Chunked,
}

/// The request on its way out: the head first, then the body's frames.
pub struct Upload {
    head: Vec<u8>,
    head_sent: usize,
    head_written: bool,
    /// Body bytes framed and not written yet.
    out: Vec<u8>,
    sent: usize,
    body: Option<SentBody>,
    framing: UploadFraming,
    /// Some body frame was taken from the client: the request cannot be
    /// sent again on another connection.
    consumed: bool,
    /// Every byte, the last chunk included, is written and flushed.
    done: bool,
}

impl Upload {
    /// Encodes the request head.
    pub fn new(req: Outgoing<'_>, body: SentBody) -> Upload {
        let (body, framing) = if body.is_end_stream() {
            (None, UploadFraming::Length)
        } else if req.has_length || body.size_hint().exact().is_some() {
            (Some(body), UploadFraming::Length)
        } else {
            (Some(body), UploadFraming::Chunked)
        };
        let mut upload = Upload {
            head: Vec::new(),
            head_sent: 0,
            head_written: false,
            out: Vec::new(),
            sent: 0,
            body,
            framing,
            consumed: false,
            done: false,
        };
        upload.encode_head(req);
        upload
    }

    /// The head into a buffer this thread's last head used (the head is
    /// written at once and the buffer given back, so one is enough).
    fn encode_head(&mut self, req: Outgoing<'_>) {
        let mut out = SPARE_HEAD.take();
        out.clear();
        out.extend_from_slice(req.method.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(req.target.as_str().as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        (req.headers)(&mut out);
        match (&self.body, &self.framing) {
            (None, _) => {}
            (Some(_), UploadFraming::Chunked) => {
                out.extend_from_slice(b"transfer-encoding: chunked\r\n");
            }
            (Some(body), UploadFraming::Length) => {
                if !req.has_length
                    && let Some(n) = body.size_hint().exact()
                {
                    out.extend_from_slice(b"content-length: ");
                    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        out.extend_from_slice(b"\r\n");
        self.head = out;
        self.head_sent = 0;
    }

    /// Writes what there is to write; `Ready(Ok)` once all is out.
    pub fn poll_send(&mut self, io: &mut Io, cx: &mut Context<'_>) -> Poll<Result<(), Error>> {
        if !self.head_written {
            ready!(poll_write_all(io, cx, &self.head, &mut self.head_sent))?;
            SPARE_HEAD.set(std::mem::take(&mut self.head));
            self.head_sent = 0;
            self.head_written = true;
        }
        loop {
            ready!(poll_write_all(io, cx, &self.out, &mut self.sent))?;
            self.out.clear();
            self.sent = 0;
            if self.done {
                return Poll::Ready(Ok(()));
            }
            let Some(body) = self.body.as_mut() else {
                ready!(Pin::new(&mut *io).poll_flush(cx))?;
                self.done = true;
                return Poll::Ready(Ok(()));
            };
            match ready!(Pin::new(body).poll_frame(cx)) {
                Some(Ok(frame)) => {
                    self.consumed = true;
                    // Trailers of the client's are not relayed.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        if let UploadFraming::Chunked = self.framing {
                            let mut size = [0u8; 16];
                            let hex = hex_len(data.len(), &mut size);
                            self.out.extend_from_slice(hex);
                            self.out.extend_from_slice(b"\r\n");
                            self.out.extend_from_slice(&data);
                            self.out.extend_from_slice(b"\r\n");
                        } else {
                            self.out.extend_from_slice(&data);
                        }
                    }
                }
                Some(Err(e)) => return Poll::Ready(Err(Error::Upload(e))),
                None => {
                    self.body = None;
                    if let UploadFraming::Chunked = self.framing {
                        self.out.extend_from_slice(b"0\r\n\r\n");
                    }
                }
            }
        }
    }
}

thread_local! {
    /// The buffer of the last request head written on this thread, kept
    /// for the next: a head costs no allocation.
    static SPARE_HEAD: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// A header map this thread is done with, for the next upstream
    /// response head ([`recycle_headers`]).
    static SPARE_HEADERS: std::cell::Cell<HeaderMap> = std::cell::Cell::new(HeaderMap::new());
}

/// Keeps `map` (emptied, its room kept) for the next response head parsed
/// on this thread. The proxy gives back each client request's map once its
/// upstream head is written for good; the response's map goes to hyper,
/// which parses the connection's next request into it. So maps go round,
/// and a proxied request allocates none (it was two allocations, about 400
/// instructions with freeing: benches/README.md, issue 15).
pub fn recycle_headers(mut map: HeaderMap) {
    map.clear();
    SPARE_HEADERS.set(map);
}

/// Writes `buf[*sent..]`, keeping count in `sent` across `Pending`.
fn poll_write_all(
    io: &mut Io,
    cx: &mut Context<'_>,
    buf: &[u8],
    sent: &mut usize,
) -> Poll<Result<(), Error>> {
    while *sent < buf.len() {
        let n = ready!(Pin::new(&mut *io).poll_write(cx, &buf[*sent..]))?;
        if n == 0 {
            return Poll::Ready(Err(Error::Io(io::ErrorKind::WriteZero.into())));
        }
        *sent += n;
    }
    Poll::Ready(Ok(()))
}

/// `n` in lower-case hex, for a chunk-size line.
fn hex_len(mut n: usize, out: &mut [u8; 16]) -> &[u8] {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut i = out.len();
    loop {
        i -= 1;
        out[i] = HEX[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &out[i..];
        }
    }
}

/// A response head as read, with how its body is framed.
pub struct Head {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The upstream lets the connection be used again.
    pub keep_alive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    /// Until the upstream closes.
    Close,
}

/// Sends the request and reads the response head, finishing the upload
/// on the way as far as the upstream takes it. `1xx` answers but `101` are
/// skipped.
pub async fn exchange(
    conn: &mut Conn,
    upload: &mut Upload,
    method: &Method,
) -> Result<Head, Error> {
    poll_fn(|cx| {
        if !upload.done {
            match upload.poll_send(&mut conn.io, cx) {
                Poll::Ready(Ok(())) | Poll::Pending => {}
                // The upstream may have answered and stopped reading the
                // body: its answer, if one comes, is what the client gets.
                Poll::Ready(Err(Error::Io(_))) if upload.consumed => {
                    upload.body = None;
                    upload.done = true;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            }
        }
        loop {
            if let Some(head) = parse_head(&mut conn.buf, method)? {
                return Poll::Ready(Ok(head));
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => return Poll::Ready(Err(Error::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e.into())),
            }
        }
    })
    .await
}

/// Parses one final response head off the front of `buf`, dropping interim
/// ones; `None` while incomplete.
fn parse_head(buf: &mut BytesMut, method: &Method) -> Result<Option<Head>, Error> {
    loop {
        if buf.is_empty() {
            return Ok(None);
        }
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(buf)? {
            httparse::Status::Complete(len) => len,
            httparse::Status::Partial if buf.len() > MAX_HEAD => {
                return Err(Error::HeadTooLarge);
            }
            httparse::Status::Partial => return Ok(None),
        };
        let code = resp.code.unwrap_or(0);
        let status = StatusCode::from_u16(code).map_err(|_| Error::Malformed("status code"))?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            buf.advance(len);
            continue;
        }
        let version = match resp.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // Header values are slices of the head, not copies; where each
        // name and value sit is noted first (on the stack), since the head
        // can be split off only once the parser lets go of it.
        let start = buf.as_ptr() as usize;
        let mut spans = [[0usize; 4]; MAX_HEADERS];
        let count = resp.headers.len();
        for (span, h) in spans.iter_mut().zip(resp.headers.iter()) {
            let name = h.name.as_ptr() as usize - start;
            let value = h.value.as_ptr() as usize - start;
            *span = [name, name + h.name.len(), value, value + h.value.len()];
        }
        let head = buf.split_to(len).freeze();
        let mut map = SPARE_HEADERS.take();
        map.reserve(count);
        for &[name_at, name_end, value_at, value_end] in &spans[..count] {
            let name = HeaderName::from_bytes(&head[name_at..name_end])
                .map_err(|_| Error::Malformed("header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_at..value_end))
                .map_err(|_| Error::Malformed("header value"))?;
            map.append(name, value);
        }
        return frame(status, version, map, method).map(Some);
    }
}

/// How the body of this response is delimited (RFC 9112 §6.3), and whether
/// the connection may be used again after it.
fn frame(
    status: StatusCode,
    version: Version,
    mut headers: HeaderMap,
    method: &Method,
) -> Result<Head, Error> {
    let mut keep_alive = match version {
        Version::HTTP_10 => connection_has_token(&headers, "keep-alive"),
        _ => !connection_has_token(&headers, "close"),
    };
    let framing = if *method == Method::HEAD
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::SWITCHING_PROTOCOLS
    {
        Framing::Empty
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        let chunked = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|last| last.trim().eq_ignore_ascii_case("chunked"));
        if headers.remove(header::CONTENT_LENGTH).is_some() {
            // A message with both was made to smuggle: do not reuse.
            keep_alive = false;
        }
        if chunked {
            Framing::Chunked
        } else {
            keep_alive = false;
            Framing::Close
        }
    } else if headers.contains_key(header::CONTENT_LENGTH) {
        let mut length = None;
        for v in headers.get_all(header::CONTENT_LENGTH) {
            for part in v
                .to_str()
                .map_err(|_| Error::Malformed("content-length"))?
                .split(',')
            {
                let part = part.trim();
                if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(Error::Malformed("content-length"));
                }
                let n: u64 = part
                    .parse()
                    .map_err(|_| Error::Malformed("content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(Error::Malformed("differing content-lengths"));
                }
                length = Some(n);
            }
        }
        match length {
            Some(0) => Framing::Empty,
            Some(n) => Framing::Length(n),
            None => return Err(Error::Malformed("content-length")),
        }
    } else {
        keep_alive = false;
        Framing::Close
    };
    Ok(Head {
        status,
        version,
        headers,
        framing,
        keep_alive,
    })
}

/// Where the chunked decoder stands.
#[derive(Debug, Clone, Copy)]
enum Chunk {
    /// Reading a chunk-size line.
    Size,
    /// This many bytes of the chunk's data are left.
    Data(u64),
    /// The CRLF after a chunk's data.
    DataEnd,
    /// Trailer lines after the last chunk, this many bytes read so far.
    Trailers(usize),
}

/// What a body reader has left to do.
#[derive(Debug, Clone, Copy)]
enum Decoder {
    Length(u64),
    Chunked(Chunk),
    Close,
    Done,
}

/// Reads a response body off the connection. `Ready(None)` at its clean
/// end, which leaves the connection ready for another exchange.
pub struct BodyReader {
    decoder: Decoder,
}

impl BodyReader {
    pub fn new(framing: Framing) -> BodyReader {
        BodyReader {
            decoder: match framing {
                Framing::Empty | Framing::Length(0) => Decoder::Done,
                Framing::Length(n) => Decoder::Length(n),
                Framing::Chunked => Decoder::Chunked(Chunk::Size),
                Framing::Close => Decoder::Close,
            },
        }
    }

    pub fn is_done(&self) -> bool {
        matches!(self.decoder, Decoder::Done)
    }

    pub fn size_hint(&self) -> SizeHint {
        match self.decoder {
            Decoder::Done => SizeHint::with_exact(0),
            Decoder::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }

    /// The next piece of the body.
    pub fn poll_data(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Error>>> {
        loop {
            match self.step(&mut conn.buf) {
                Err(e) => return Poll::Ready(Some(Err(e))),
                Ok(Some(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(None) if self.is_done() => return Poll::Ready(None),
                Ok(None) => {}
            }
            match ready!(conn.poll_fill(cx)) {
                Ok(0) => {
                    return match self.decoder {
                        Decoder::Close => {
                            self.decoder = Decoder::Done;
                            Poll::Ready(None)
                        }
                        _ => Poll::Ready(Some(Err(Error::Io(io::ErrorKind::UnexpectedEof.into())))),
                    };
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    /// Decodes what `buf` holds: data to hand on, or `None` when more must
    /// be read (or the body is done).
    fn step(&mut self, buf: &mut BytesMut) -> Result<Option<Bytes>, Error> {
        loop {
            match self.decoder {
                Decoder::Done => return Ok(None),
                Decoder::Length(left) => {
                    let Some((data, left)) = take_up_to(buf, left) else {
                        return Ok(None);
                    };
                    self.decoder = if left == 0 {
                        Decoder::Done
                    } else {
                        Decoder::Length(left)
                    };
                    return Ok(Some(data));
                }
                Decoder::Close => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(buf.split().freeze()));
                }
                Decoder::Chunked(Chunk::Size) => {
                    let Some(line) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(Error::Malformed("chunk-size line too long"));
                        }
                        return Ok(None);
                    };
                    let size = chunk_size(&buf[..line])?;
                    buf.advance(line + 2);
                    self.decoder = Decoder::Chunked(if size == 0 {
                        Chunk::Trailers(0)
                    } else {
                        Chunk::Data(size)
                    });
                }
                Decoder::Chunked(Chunk::Data(left)) => {
                    let Some((data, left)) = take_up_to(buf, left) else {
                        return Ok(None);
                    };
                    self.decoder = Decoder::Chunked(if left == 0 {
                        Chunk::DataEnd
                    } else {
                        Chunk::Data(left)
                    });
                    return Ok(Some(data));
                }
                Decoder::Chunked(Chunk::DataEnd) => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Error::Malformed("chunk data not ended by CRLF"));
                    }
                    buf.advance(2);
                    self.decoder = Decoder::Chunked(Chunk::Size);
                }
                Decoder::Chunked(Chunk::Trailers(read)) => {
                    let Some(line) = find_crlf(buf) else {
                        if read + buf.len() > MAX_TRAILERS {
                            return Err(Error::Malformed("trailers too large"));
                        }
                        return Ok(None);
                    };
                    // Trailers are read and dropped: HTTP/1.1 clients of a
                    // proxy get none (as nginx).
                    buf.advance(line + 2);
                    self.decoder = if line == 0 {
                        Decoder::Done
                    } else if read + line + 2 > MAX_TRAILERS {
                        return Err(Error::Malformed("trailers too large"));
                    } else {
                        Decoder::Chunked(Chunk::Trailers(read + line + 2))
                    };
                }
            }
        }
    }
}

/// What `buf` holds of the `left` bytes still due, split off, and how many
/// are due after it; `None` when `buf` is empty.
fn take_up_to(buf: &mut BytesMut, left: u64) -> Option<(Bytes, u64)> {
    if buf.is_empty() {
        return None;
    }
    let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
    Some((buf.split_to(n).freeze(), left - n as u64))
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    buf.windows(2).position(|w| w == b"\r\n")
}

/// The size of a chunk-size line: hex digits, then optional extensions.
fn chunk_size(line: &[u8]) -> Result<u64, Error> {
    let digits = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    if digits == 0 || digits > 16 {
        return Err(Error::Malformed("chunk size"));
    }
    // Then optional blanks and extensions (`;name=value`), or nothing.
    let rest = &line[digits..];
    let blanks = rest
        .iter()
        .take_while(|b| matches!(b, b' ' | b'\t'))
        .count();
    if !matches!(rest.get(blanks), None | Some(b';')) {
        return Err(Error::Malformed("chunk size"));
    }
    let text = std::str::from_utf8(&line[..digits]).map_err(|_| Error::Malformed("chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| Error::Malformed("chunk size"))
}

/// Whether a failed exchange on a reused connection may be tried again on
/// a new one: it failed before any answer, no part of the request body was
/// taken from the client, and either the request is idempotent or its head
/// did not get out whole (as nginx, which never resends a `POST` the
/// upstream may have acted on).
pub fn may_retry(e: &Error, upload: &Upload, method: &Method) -> bool {
    e.is_stale() && !upload.consumed && (method.is_idempotent() || !upload.head_written)
}

impl Upload {
    /// Every byte of the request, the body's last included, is out.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// Starts over on another connection; only when [`may_retry`] said so,
    /// so no body byte has been taken yet.
    pub fn rewind(&mut self, req: Outgoing<'_>) {
        self.encode_head(req);
        self.head_written = false;
        self.done = false;
    }
}

#[cfg(test)]
mod tests;
