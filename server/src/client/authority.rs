//! A connection-level shim that lets etcdctl 3.4's per-endpoint commands through.
//!
//! etcdctl 3.4 sends the whole endpoint URL (`http://127.0.0.1:2379`) as the HTTP/2 `:authority`
//! of `endpoint status`, `endpoint hashkv` and `--cluster` commands. etcd (grpc-go) accepts it;
//! the `h2` crate under tonic answers RST_STREAM PROTOCOL_ERROR and has no lenient mode. The
//! value arrives HPACK-coded, usually as a literal *with incremental indexing*, so later
//! requests name it by dynamic-table index and patching bytes in place cannot work.
//!
//! [`Rewriter`] is a sans-I/O filter over the client-to-server byte stream. It checks the
//! connection preface, then walks the frames. Every frame except HEADERS and CONTINUATION
//! passes through untouched. A complete header block (HEADERS plus its CONTINUATIONs) is
//! decoded with the connection's HPACK decoder, which so tracks the client's dynamic table.
//! A block whose `:authority` is not a URL goes on byte for byte, and if it is the
//! connection's first, the rest of the connection passes through undecoded: gRPC clients keep
//! one authority per connection, so ordinary clients pay for decoding one block. From the first block
//! with a URL `:authority` on, every block is rewritten: such values are cut to their
//! `host:port`, and every field is re-encoded as a *literal never indexed* with a plain
//! string. The server's table is then frozen and never referred to, no encoder state has to
//! be mirrored, and a field the client marked never-indexed stays never-indexed. Padding is
//! dropped, the PRIORITY fields kept, and the block is re-split into frames of at most
//! [`FRAME_BYTES_MAX`].
//!
//! Anything the shim cannot parse (no preface, a block that does not decode, an interleaved
//! frame, a block above [`BLOCK_BYTES_MAX`]) makes it pass the rest of the connection through
//! unchanged, so that h2 rejects it as it would without the shim.
//!
//! Example: `41 90 <huffman "http://127.0.0.1:2379">` (literal with incremental indexing,
//! name index 1 = `:authority`) comes out as `10 0a ":authority" 0e "127.0.0.1:2379"`, and a
//! later `be` (dynamic index 62, the same URL) comes out the same way.
//!
//! [`AuthorityFix`] applies the filter to an I/O stream (tokio build only; the simulator's
//! tonic clients send proper authorities). [`super::listener`] puts every gRPC connection
//! behind one.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The HTTP/2 client connection preface (RFC 9113 section 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An HTTP/2 frame header's size.
const FRAME_HEADER_BYTES: usize = 9;
/// The largest frame the shim emits: the initial SETTINGS_MAX_FRAME_SIZE, which every peer
/// accepts whatever it advertises.
pub const FRAME_BYTES_MAX: usize = 16_384;
/// The largest header block the shim rewrites; a larger one is passed through as it is.
pub const BLOCK_BYTES_MAX: usize = 1 << 20;
/// The HPACK dynamic table size the client's encoder may use: the server's
/// SETTINGS_HEADER_TABLE_SIZE, which h2 leaves at its default.
const HEADER_TABLE_BYTES_MAX: usize = 4_096;
/// How much the adapter reads from the socket at once.
const READ_CHUNK_BYTES: usize = 16_384;

const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
const PRIORITY_BYTES: usize = 5;

/// Where the filter is in the client's byte stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for the 24-byte connection preface.
    Preface,
    /// At a frame boundary.
    FrameHeader,
    /// Inside a passed-through frame, with this many payload bytes left.
    Skip(u32),
    /// Gave up: everything from here on passes through unchanged.
    Passthrough,
}

/// A header block being gathered from a HEADERS frame and its CONTINUATIONs.
#[derive(Debug)]
struct Block {
    stream_id: u32,
    /// The HEADERS frame's END_STREAM flag.
    end_stream: bool,
    /// The HEADERS frame's priority fields, if it had the PRIORITY flag.
    priority: Option<[u8; PRIORITY_BYTES]>,
    /// The header block fragments, concatenated.
    fragment: Vec<u8>,
    /// The frames as received, sent on unchanged if the block cannot be rewritten.
    raw: Vec<u8>,
}

/// A frame header (RFC 9113 section 4.1).
#[derive(Clone, Copy, Debug)]
struct FrameHeader {
    length: u32,
    kind: u8,
    flags: u8,
    stream_id: u32,
}

impl FrameHeader {
    fn parse(bytes: &[u8]) -> Option<FrameHeader> {
        let b: &[u8; FRAME_HEADER_BYTES] = bytes.get(..FRAME_HEADER_BYTES)?.try_into().ok()?;
        Some(FrameHeader {
            length: u32::from_be_bytes([0, b[0], b[1], b[2]]),
            kind: b[3],
            flags: b[4],
            stream_id: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        })
    }

    fn write(&self, out: &mut Vec<u8>) {
        assert!(
            self.length < 1 << 24,
            "frame length {} above 24 bits",
            self.length
        );
        out.extend_from_slice(&self.length.to_be_bytes()[1..]);
        out.push(self.kind);
        out.push(self.flags);
        out.extend_from_slice(&self.stream_id.to_be_bytes());
    }
}

/// The sans-I/O filter over one connection's client-to-server bytes: [`Rewriter::feed`] what
/// arrives, send on what [`Rewriter::output`] holds.
pub struct Rewriter {
    phase: Phase,
    decoder: Decoder<'static>,
    /// Received bytes, consumed up to `input_pos` (the rest: a partial preface, frame header
    /// or header frame). A cursor, not a drain per frame, which would move the rest each time.
    input: Vec<u8>,
    input_pos: usize,
    /// Bytes ready for the server.
    output: Vec<u8>,
    block: Option<Block>,
    /// Set by the first block with a URL `:authority`: from then on every block is re-encoded.
    rewriting: bool,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl Rewriter {
    /// A filter at the start of a connection.
    pub fn new() -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(HEADER_TABLE_BYTES_MAX);
        Rewriter {
            phase: Phase::Preface,
            decoder,
            input: Vec::new(),
            input_pos: 0,
            output: Vec::new(),
            block: None,
            rewriting: false,
        }
    }

    /// Takes `bytes` from the client and moves what it can to the output.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            if self.pending().is_empty() {
                bytes = self.pass_direct(bytes);
                if bytes.is_empty() {
                    break;
                }
            }
            self.input.extend_from_slice(bytes);
            bytes = &[];
            self.step_all();
        }
    }

    /// Bytes ready for the server.
    pub fn output(&self) -> &[u8] {
        &self.output
    }

    /// Drops the first `n` output bytes, which have been sent.
    pub fn consume_output(&mut self, n: usize) {
        assert!(
            n <= self.output.len(),
            "consumed {n} of {} bytes",
            self.output.len()
        );
        self.output.drain(..n);
    }

    /// The client closed its side: whatever is held back goes on as it is.
    pub fn finish(&mut self) {
        self.give_up();
    }

    /// The fast path for passed-through payload: copies it without buffering it as input.
    fn pass_direct<'b>(&mut self, bytes: &'b [u8]) -> &'b [u8] {
        match self.phase {
            Phase::Passthrough => {
                self.output.extend_from_slice(bytes);
                &[]
            }
            Phase::Skip(left) => {
                let n = bytes.len().min(left as usize);
                self.output.extend_from_slice(&bytes[..n]);
                self.skipped(left, n);
                &bytes[n..]
            }
            Phase::Preface | Phase::FrameHeader => bytes,
        }
    }

    fn skipped(&mut self, left: u32, n: usize) {
        let n = u32::try_from(n).expect("n <= left, a u32");
        self.phase = if n == left {
            Phase::FrameHeader
        } else {
            Phase::Skip(left - n)
        };
    }

    /// Runs [`Rewriter::step`] until it needs more input, then drops the consumed input.
    fn step_all(&mut self) {
        while self.input_pos < self.input.len() && self.step() {}
        self.input.drain(..self.input_pos);
        self.input_pos = 0;
    }

    /// Received bytes not yet consumed.
    fn pending(&self) -> &[u8] {
        &self.input[self.input_pos..]
    }

    /// Moves the next `n` received bytes to the output.
    fn pass_input(&mut self, n: usize) {
        let end = self.input_pos + n;
        self.output
            .extend_from_slice(&self.input[self.input_pos..end]);
        self.input_pos = end;
    }

    /// Consumes one unit of input; false when more must arrive first.
    fn step(&mut self) -> bool {
        match self.phase {
            Phase::Passthrough => {
                self.pass_input(self.pending().len());
                false
            }
            Phase::Skip(left) => {
                let n = self.pending().len().min(left as usize);
                self.pass_input(n);
                self.skipped(left, n);
                true
            }
            Phase::Preface => self.step_preface(),
            Phase::FrameHeader => self.step_frame(),
        }
    }

    fn step_preface(&mut self) -> bool {
        let n = self.pending().len().min(PREFACE.len());
        if self.pending()[..n] != PREFACE[..n] {
            self.give_up();
            return true;
        }
        if n < PREFACE.len() {
            return false;
        }
        self.pass_input(n);
        self.phase = Phase::FrameHeader;
        true
    }

    fn step_frame(&mut self) -> bool {
        let Some(header) = FrameHeader::parse(self.pending()) else {
            return false;
        };
        let is_header_frame = header.kind == TYPE_HEADERS || header.kind == TYPE_CONTINUATION;
        if !is_header_frame {
            if self.block.is_some() {
                // RFC 9113 6.10: nothing may interleave a header block. Let h2 say so.
                self.give_up();
                return true;
            }
            self.pass_input(FRAME_HEADER_BYTES);
            self.phase = Phase::Skip(header.length);
            return true;
        }
        let frame_bytes = FRAME_HEADER_BYTES + header.length as usize;
        let held = self.block.as_ref().map_or(0, |b| b.raw.len());
        if held + frame_bytes > BLOCK_BYTES_MAX {
            tracing::debug!(
                bytes = held + frame_bytes,
                "header block too large to rewrite"
            );
            self.give_up();
            return true;
        }
        if self.pending().len() < frame_bytes {
            return false;
        }
        let frame = self.pending()[..frame_bytes].to_vec();
        self.input_pos += frame_bytes;
        if self.on_header_frame(header, &frame).is_none() {
            // Not gathered: back in front of the input, for give_up to send on.
            self.input_pos -= frame_bytes;
            self.give_up();
        }
        true
    }

    /// A HEADERS or CONTINUATION frame: gathers it, and rewrites the block once complete.
    /// None when the stream does not make sense; the frame has not been emitted then.
    fn on_header_frame(&mut self, header: FrameHeader, frame: &[u8]) -> Option<()> {
        let payload = &frame[FRAME_HEADER_BYTES..];
        match (&mut self.block, header.kind) {
            (None, TYPE_HEADERS) => self.block = Some(start_block(header, payload)?),
            (Some(block), TYPE_CONTINUATION) if block.stream_id == header.stream_id => {
                block.fragment.extend_from_slice(payload);
            }
            _ => return None,
        }
        let block = self.block.as_mut()?;
        block.raw.extend_from_slice(frame);
        if header.flags & FLAG_END_HEADERS != 0 {
            self.finish_block();
        }
        Some(())
    }

    fn finish_block(&mut self) {
        let Some(block) = self.block.take() else {
            return;
        };
        let mut fields = Vec::new();
        let decoded = self.decoder.decode_with_cb(&block.fragment, |name, value| {
            fields.push((name.into_owned(), value.into_owned()));
        });
        if let Err(e) = decoded {
            tracing::debug!(error = ?e, "header block does not decode; passing it through");
            self.block = Some(block);
            self.give_up();
            return;
        }
        let mut fixed = false;
        for (name, value) in &mut fields {
            fixed |= fix_authority(name, value);
        }
        if !fixed && !self.rewriting {
            // The server's table still matches the client's: the block can go as it came. A
            // gRPC client keeps one `:authority` per connection, so a proper one in the first
            // block means the connection needs nothing from the shim: stop decoding (decoding
            // every block cost a quarter of the server's CPU on puts, in Huffman decoding).
            self.output.extend_from_slice(&block.raw);
            self.phase = Phase::Passthrough;
            return;
        }
        self.rewriting = true;
        let encoded = encode_block(&fields);
        write_block(&block, &encoded, &mut self.output);
    }

    /// Sends everything held back unchanged and passes the rest of the connection through.
    fn give_up(&mut self) {
        if let Some(block) = self.block.take() {
            self.output.extend_from_slice(&block.raw);
        }
        self.pass_input(self.pending().len());
        self.phase = Phase::Passthrough;
    }
}

/// A HEADERS frame's block: its priority fields and its fragment without padding.
fn start_block(header: FrameHeader, payload: &[u8]) -> Option<Block> {
    let mut start = 0;
    let mut end = payload.len();
    if header.flags & FLAG_PADDED != 0 {
        let pad = *payload.first()? as usize;
        start = 1;
        end = end.checked_sub(pad)?;
    }
    let mut priority = None;
    if header.flags & FLAG_PRIORITY != 0 {
        let fields = payload.get(start..start + PRIORITY_BYTES)?;
        priority = Some(fields.try_into().ok()?);
        start += PRIORITY_BYTES;
    }
    let fragment = payload.get(start..end)?.to_vec();
    Some(Block {
        stream_id: header.stream_id,
        end_stream: header.flags & FLAG_END_STREAM != 0,
        priority,
        fragment,
        raw: Vec::new(),
    })
}

/// Cuts an `:authority` that is a URL down to its `host:port`.
///
/// `http://127.0.0.1:2379` becomes `127.0.0.1:2379`; `127.0.0.1:2379` stays as it is.
/// True when it changed `value`.
fn fix_authority(name: &[u8], value: &mut Vec<u8>) -> bool {
    if name != b":authority" {
        return false;
    }
    let Some(at) = value.windows(3).position(|w| w == b"://") else {
        return false;
    };
    let rest = &value[at + 3..];
    let host_port = rest.split(|&b| b == b'/').next().unwrap_or(rest);
    if host_port.is_empty() {
        return false;
    }
    *value = host_port.to_vec();
    true
}

/// Encodes `fields` as literals never indexed, with new names and plain strings (RFC 7541
/// section 6.2.3): nothing enters the server's dynamic table.
fn encode_block(fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x10);
        encode_string(name, &mut out);
        encode_string(value, &mut out);
    }
    out
}

/// A string literal without Huffman coding: its length as a 7-bit-prefix integer, then itself.
fn encode_string(s: &[u8], out: &mut Vec<u8>) {
    encode_integer(s.len() as u64, 7, 0x00, out);
    out.extend_from_slice(s);
}

/// An HPACK integer with an N-bit prefix (RFC 7541 section 5.1); `first` holds the bits above.
///
/// With a 5-bit prefix, 10 is `0a` and 1337 is `1f 9a 0a` (RFC 7541 C.1).
fn encode_integer(mut n: u64, prefix_bits: u32, first: u8, out: &mut Vec<u8>) {
    assert!(
        (1..=8).contains(&prefix_bits),
        "prefix of {prefix_bits} bits"
    );
    let max_prefix = (1u64 << prefix_bits) - 1;
    if n < max_prefix {
        out.push(first | n as u8);
        return;
    }
    out.push(first | max_prefix as u8);
    n -= max_prefix;
    while n >= 128 {
        out.push((n % 128) as u8 | 0x80);
        n /= 128;
    }
    out.push(n as u8);
}

/// Writes the rewritten block as a HEADERS frame and as many CONTINUATIONs as it needs.
fn write_block(block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
    let priority_len = if block.priority.is_some() {
        PRIORITY_BYTES
    } else {
        0
    };
    let first_len = encoded.len().min(FRAME_BYTES_MAX - priority_len);
    let (first, mut rest) = encoded.split_at(first_len);
    let mut flags = if block.end_stream { FLAG_END_STREAM } else { 0 };
    if block.priority.is_some() {
        flags |= FLAG_PRIORITY;
    }
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    let length = (priority_len + first.len()) as u32;
    let stream_id = block.stream_id;
    FrameHeader {
        length,
        kind: TYPE_HEADERS,
        flags,
        stream_id,
    }
    .write(out);
    if let Some(priority) = &block.priority {
        out.extend_from_slice(priority);
    }
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(rest.len().min(FRAME_BYTES_MAX));
        let flags = if tail.is_empty() { FLAG_END_HEADERS } else { 0 };
        let length = chunk.len() as u32;
        FrameHeader {
            length,
            kind: TYPE_CONTINUATION,
            flags,
            stream_id,
        }
        .write(out);
        out.extend_from_slice(chunk);
        rest = tail;
    }
}

/// An I/O stream whose incoming bytes go through a [`Rewriter`]; writes pass straight through.
pub struct AuthorityFix<T> {
    inner: T,
    rewriter: Rewriter,
    chunk: Box<[u8]>,
    eof: bool,
}

impl<T> AuthorityFix<T> {
    /// Wraps a freshly accepted client connection.
    pub fn new(inner: T) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            chunk: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            eof: false,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            let ready = this.rewriter.output();
            if !ready.is_empty() || this.eof {
                let n = ready.len().min(buf.remaining());
                buf.put_slice(&ready[..n]);
                this.rewriter.consume_output(n);
                return Poll::Ready(Ok(()));
            }
            let mut chunk = ReadBuf::new(&mut this.chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut chunk))?;
            if chunk.filled().is_empty() {
                this.eof = true;
                this.rewriter.finish();
            } else {
                this.rewriter.feed(chunk.filled());
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests;
