use super::*;

type Fields = Vec<(Vec<u8>, Vec<u8>)>;

fn hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("ascii hex");
            u8::from_str_radix(pair, 16).expect("hex digits")
        })
        .collect()
}

fn frame(kind: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let length = payload.len() as u32;
    FrameHeader {
        length,
        kind,
        flags,
        stream_id,
    }
    .write(&mut out);
    out.extend_from_slice(payload);
    out
}

fn headers(stream_id: u32, block: &[u8]) -> Vec<u8> {
    frame(TYPE_HEADERS, FLAG_END_HEADERS, stream_id, block)
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(n, v)| (n.as_bytes().to_vec(), v.as_bytes().to_vec()))
        .collect()
}

/// Feeds the preface and `frames` in one go; returns the output after the preface.
fn rewrite(frames: &[Vec<u8>]) -> Vec<u8> {
    let mut r = Rewriter::new();
    r.feed(PREFACE);
    for f in frames {
        r.feed(f);
    }
    let out = r.output().to_vec();
    assert_eq!(&out[..PREFACE.len()], PREFACE);
    out[PREFACE.len()..].to_vec()
}

/// Splits `bytes` into frames.
fn frames_of(mut bytes: &[u8]) -> Vec<(FrameHeader, Vec<u8>)> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let h = FrameHeader::parse(bytes).expect("a whole frame header");
        let end = FRAME_HEADER_BYTES + h.length as usize;
        out.push((h, bytes[FRAME_HEADER_BYTES..end].to_vec()));
        bytes = &bytes[end..];
    }
    out
}

/// Decodes every header block in rewritten output with a fresh decoder each: the rewrite never
/// indexes, so each block stands alone.
fn blocks_of(bytes: &[u8]) -> Vec<Fields> {
    let mut blocks = Vec::new();
    let mut block = Vec::new();
    for (h, payload) in frames_of(bytes) {
        assert!(h.kind == TYPE_HEADERS || h.kind == TYPE_CONTINUATION);
        assert_eq!(h.flags & FLAG_PADDED, 0);
        let skip = if h.flags & FLAG_PRIORITY != 0 {
            PRIORITY_BYTES
        } else {
            0
        };
        block.extend_from_slice(&payload[skip..]);
        if h.flags & FLAG_END_HEADERS != 0 {
            assert_eq!(block[0] & 0xf0, 0x10, "a literal never indexed, new name");
            blocks.push(Decoder::new().decode(&block).expect("a valid block"));
            block.clear();
        }
    }
    blocks
}

// Reference: RFC 7541 Appendix C.3 (requests without Huffman coding, one connection).
const C3: [&str; 3] = [
    "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
    "8286 84be 5808 6e6f 2d63 6163 6865",
    "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
];

// Reference: RFC 7541 Appendix C.4 (the same requests with Huffman coding).
const C4: [&str; 3] = [
    "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
    "8286 84be 5886 a8eb 1064 9cbf",
    "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
];

fn rfc_requests() -> Vec<Fields> {
    let first = [(":method", "GET"), (":scheme", "http"), (":path", "/")];
    let authority = (":authority", "www.example.com");
    let mut c1 = first.to_vec();
    c1.push(authority);
    let mut c2 = c1.clone();
    c2.push(("cache-control", "no-cache"));
    let c3 = [
        (":method", "GET"),
        (":scheme", "https"),
        (":path", "/index.html"),
        authority,
        ("custom-key", "custom-value"),
    ];
    vec![fields(&c1), fields(&c2), fields(&c3)]
}

/// The RFC's requests decode to the RFC's fields; on one connection, whose first block has a
/// proper `:authority`, they and everything after them (even a later URL `:authority`, which
/// no gRPC client sends: it keeps one authority per connection) pass byte for byte, undecoded.
fn check_rfc_sequence(blocks: [&str; 3]) {
    let mut frames: Vec<Vec<u8>> = blocks
        .iter()
        .zip(1..)
        .map(|(b, id)| headers(id * 2 - 1, &hex(b)))
        .collect();
    let mut fourth = hex("828684");
    fourth.extend(indexed_authority("http://x:1"));
    fourth.push(0xbf);
    frames.push(headers(7, &fourth));
    let out = rewrite(&frames);
    assert_eq!(out, frames.concat(), "passed through unchanged");
    let mut d = Decoder::new();
    let decoded: Vec<Fields> = blocks
        .iter()
        .map(|b| d.decode(&hex(b)).expect("rfc"))
        .collect();
    assert_eq!(decoded, rfc_requests());
}

/// A connection whose first block has a URL `:authority` is rewritten from the start, and a
/// later block naming the RFC's entries by dynamic index is decoded against the table the
/// client built and re-encoded.
#[test]
fn a_url_first_block_rewrites_the_connection_tracking_the_clients_table() {
    let mut first = hex("828684");
    first.extend(indexed_authority("http://127.0.0.1:2379"));
    // Index 62: the URL authority; the RFC's C.3 second request then refers to it.
    let second = hex("8286 84be 5808 6e6f 2d63 6163 6865");
    let out = rewrite(&[headers(1, &first), headers(3, &second)]);
    let authority = (":authority", "127.0.0.1:2379");
    let base = [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        authority,
    ];
    let mut with_cache = base.to_vec();
    with_cache.push(("cache-control", "no-cache"));
    assert_eq!(blocks_of(&out), vec![fields(&base), fields(&with_cache)]);
}

#[test]
fn rfc7541_c3_requests_decode_and_a_proper_connection_passes_through() {
    check_rfc_sequence(C3);
}

#[test]
fn rfc7541_c4_huffman_requests_decode_and_a_proper_connection_passes_through() {
    check_rfc_sequence(C4);
}

// Reference: RFC 7541 C.1.1-C.1.3.
#[test]
fn integers_encode_as_rfc7541_c1() {
    let mut out = Vec::new();
    encode_integer(10, 5, 0, &mut out);
    encode_integer(1337, 5, 0, &mut out);
    encode_integer(42, 8, 0, &mut out);
    assert_eq!(out, hex("0a 1f9a0a 2a"));
}

/// A literal with incremental indexing of `:authority` (static index 1), not Huffman-coded.
fn indexed_authority(value: &str) -> Vec<u8> {
    let mut b = vec![0x41, value.len() as u8];
    b.extend_from_slice(value.as_bytes());
    b
}

#[test]
fn url_authority_is_cut_to_host_port_also_when_named_by_index() {
    // 82 86 84 = GET, http, /; the URL and then `te` enter the dynamic table (the URL ends at
    // index 63 = bf) and the second request names it by index only, as grpc-go's encoder does.
    let mut first = hex("828684");
    first.extend(indexed_authority("http://127.0.0.1:2379"));
    first.extend(
        hex("4002")
            .into_iter()
            .chain(*b"te")
            .chain([8])
            .chain(*b"trailers"),
    );
    let second = hex("8286 84bf");
    let out = rewrite(&[headers(1, &first), headers(3, &second)]);
    let blocks = blocks_of(&out);
    let authority = (":authority".as_bytes().to_vec(), b"127.0.0.1:2379".to_vec());
    assert_eq!(blocks[0][3], authority);
    assert_eq!(blocks[1][3], authority);
    assert_eq!(blocks[0].len(), 5);
    assert_eq!(
        blocks[0][..3],
        fields(&[(":method", "GET"), (":scheme", "http"), (":path", "/")])
    );
    assert_eq!(blocks[1].len(), 4);
}

#[test]
fn fix_authority_keeps_plain_authorities() {
    for (input, want) in [
        ("http://127.0.0.1:2379", "127.0.0.1:2379"),
        ("https://h:1/x/y", "h:1"),
        ("127.0.0.1:2379", "127.0.0.1:2379"),
        ("http://", "http://"),
    ] {
        let mut v = input.as_bytes().to_vec();
        fix_authority(b":authority", &mut v);
        assert_eq!(v, want.as_bytes(), "{input}");
    }
    let mut v = b"http://x:1".to_vec();
    fix_authority(b"referer", &mut v);
    assert_eq!(v, b"http://x:1");
}

#[test]
fn padding_is_dropped_and_priority_kept() {
    let mut block = hex("828684");
    block.extend(indexed_authority("http://www.example.com"));
    let mut payload = vec![3]; // pad length
    payload.extend_from_slice(&[0x80, 0, 0, 1, 16]); // exclusive, depends on 1, weight 16
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0, 0, 0]);
    let flags = FLAG_END_HEADERS | FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM;
    let out = rewrite(&[frame(TYPE_HEADERS, flags, 5, &payload)]);
    let frames = frames_of(&out);
    assert_eq!(frames.len(), 1);
    let (h, p) = &frames[0];
    assert_eq!(h.flags, FLAG_END_HEADERS | FLAG_PRIORITY | FLAG_END_STREAM);
    assert_eq!(h.stream_id, 5);
    assert_eq!(p[..PRIORITY_BYTES], [0x80, 0, 0, 1, 16]);
    let mut want = rfc_requests()[0].clone();
    want[3].1 = b"www.example.com".to_vec();
    assert_eq!(blocks_of(&out), vec![want]);
}

#[test]
fn continuations_are_joined_and_large_blocks_resplit() {
    // One 20 000-byte header value, sent as a HEADERS and two CONTINUATIONs.
    let value = "v".repeat(20_000);
    let mut block = hex("828684");
    block.extend(indexed_authority("http://h:1"));
    block.extend(hex("40 01"));
    block.push(b'x');
    encode_integer(value.len() as u64, 7, 0, &mut block);
    block.extend_from_slice(value.as_bytes());
    let (a, rest) = block.split_at(7_000);
    let (b, c) = rest.split_at(7_000);
    let out = rewrite(&[
        frame(TYPE_HEADERS, FLAG_END_STREAM, 1, a),
        frame(TYPE_CONTINUATION, 0, 1, b),
        frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, c),
    ]);
    let kinds: Vec<(u8, u8)> = frames_of(&out)
        .iter()
        .map(|(h, _)| (h.kind, h.flags))
        .collect();
    let end = FLAG_END_HEADERS;
    assert_eq!(
        kinds,
        [(TYPE_HEADERS, FLAG_END_STREAM), (TYPE_CONTINUATION, end)]
    );
    let want = fields(&[
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "h:1"),
        ("x", &value),
    ]);
    assert_eq!(blocks_of(&out), vec![want]);
}

#[test]
fn other_frames_pass_through_byte_for_byte() {
    let settings = frame(0x4, 0, 0, &hex("0003 0000 0064"));
    let data = frame(0x0, 0x1, 1, &[7; 40_000]);
    let ping = frame(0x6, 0, 0, &[1; 8]);
    let frames = [settings, data, ping];
    assert_eq!(rewrite(&frames), frames.concat());
}

#[test]
fn output_does_not_depend_on_how_input_is_split() {
    let mut input = PREFACE.to_vec();
    input.extend(frame(0x4, 0, 0, &[]));
    for (b, id) in C4.iter().zip(1..) {
        input.extend(headers(id * 2 - 1, &hex(b)));
        input.extend(frame(0x0, 0x1, id * 2 - 1, b"hello"));
    }
    let mut whole = Rewriter::new();
    whole.feed(&input);
    let mut bytewise = Rewriter::new();
    for b in &input {
        bytewise.feed(std::slice::from_ref(b));
    }
    assert_eq!(whole.output(), bytewise.output());
}

#[test]
fn garbage_passes_through_unchanged() {
    let mut r = Rewriter::new();
    let junk = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    r.feed(junk);
    assert_eq!(r.output(), junk);

    // Index 0 is not a field: the block does not decode, so it and all after it pass as sent.
    let bad = headers(1, &hex("80"));
    let after = headers(3, &hex(C3[0]));
    assert_eq!(
        rewrite(&[bad.clone(), after.clone()]),
        [bad, after].concat()
    );

    // A frame cut short by the end of the connection is sent on as received.
    let mut r = Rewriter::new();
    r.feed(PREFACE);
    r.feed(&headers(1, &hex(C3[0]))[..12]);
    r.finish();
    assert_eq!(r.output().len(), PREFACE.len() + 12);
}

#[test]
fn interleaved_frame_inside_a_block_passes_through() {
    let open = frame(TYPE_HEADERS, 0, 1, &hex(C3[0]));
    let ping = frame(0x6, 0, 0, &[0; 8]);
    assert_eq!(
        rewrite(&[open.clone(), ping.clone()]),
        [open, ping].concat()
    );

    let open = frame(TYPE_HEADERS, 0, 1, &hex("8286"));
    let other = frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 3, &hex("84"));
    assert_eq!(
        rewrite(&[open.clone(), other.clone()]),
        [open, other].concat()
    );
}

#[test]
fn a_padding_longer_than_the_frame_passes_through() {
    let bad = frame(TYPE_HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, &[9, 0x82]);
    assert_eq!(rewrite(std::slice::from_ref(&bad)), bad);
}
