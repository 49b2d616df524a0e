use super::*;

fn head(text: &str, method: &Method) -> Result<Option<Head>, Error> {
    parse_head(&mut BytesMut::from(text.as_bytes()), method)
}

/// Decodes `wire` fed in pieces of `step` bytes: the data, and whether
/// the body ended cleanly with nothing left over.
fn decode(framing: Framing, wire: &[u8], step: usize) -> Result<(Vec<u8>, bool), Error> {
    let mut reader = BodyReader::new(framing);
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    for piece in wire.chunks(step.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(d) = reader.step(&mut buf)? {
            data.extend_from_slice(&d);
        }
    }
    Ok((data, reader.is_done() && buf.is_empty()))
}

#[test]
fn bodies_are_framed_as_rfc_9112_says() {
    let get = Method::GET;
    let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", &get)
        .unwrap()
        .unwrap();
    assert_eq!((h.framing, h.keep_alive), (Framing::Length(5), true));
    let h = head(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        &Method::HEAD,
    )
    .unwrap()
    .unwrap();
    assert_eq!(h.framing, Framing::Empty);
    for status in ["204 No Content", "304 Not Modified"] {
        let h = head(
            &format!("HTTP/1.1 {status}\r\nContent-Length: 9\r\n\r\n"),
            &get,
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.framing, Framing::Empty, "{status}");
    }
    // Chunked wins over a length, and the connection is not reused.
    let h = head(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        &get,
    )
    .unwrap()
    .unwrap();
    assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
    assert!(!h.headers.contains_key(header::CONTENT_LENGTH));
    // A coding other than chunked last: read until close.
    let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", &get)
        .unwrap()
        .unwrap();
    assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
    let h = head("HTTP/1.1 200 OK\r\n\r\n", &get).unwrap().unwrap();
    assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
    // Keep-alive by version and Connection.
    let h = head("HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n", &get)
        .unwrap()
        .unwrap();
    assert!(!h.keep_alive);
    let h = head(
        "HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 1\r\n\r\n",
        &get,
    )
    .unwrap()
    .unwrap();
    assert!(h.keep_alive);
    let h = head(
        "HTTP/1.1 200 OK\r\nConnection: x, close\r\nContent-Length: 1\r\n\r\n",
        &get,
    )
    .unwrap()
    .unwrap();
    assert!(!h.keep_alive);
    // Equal repeated lengths are one length; differing ones an error.
    let h = head(
        "HTTP/1.1 200 OK\r\nContent-Length: 3, 3\r\nContent-Length: 3\r\n\r\n",
        &get,
    )
    .unwrap()
    .unwrap();
    assert_eq!(h.framing, Framing::Length(3));
    for bad in ["3, 4", "-1", "+3", "0x10", "", "99999999999999999999999"] {
        let text = format!("HTTP/1.1 200 OK\r\nContent-Length: {bad}\r\n\r\n");
        assert!(head(&text, &get).is_err(), "{bad:?}");
    }
}

#[test]
fn interim_answers_are_skipped_and_heads_are_bounded() {
    let get = Method::GET;
    let h = head(
        "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: <a>\r\n\r\n\
         HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        &get,
    )
    .unwrap()
    .unwrap();
    assert_eq!(h.status, StatusCode::CREATED);
    assert!(!h.headers.contains_key("link"));
    // 101 is final.
    let h = head(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n",
        &get,
    )
    .unwrap()
    .unwrap();
    assert_eq!(
        (h.status, h.framing),
        (StatusCode::SWITCHING_PROTOCOLS, Framing::Empty)
    );
    // Incomplete: wait; too long incomplete: refuse; garbage: refuse.
    assert!(head("HTTP/1.1 200 OK\r\nA: b", &get).unwrap().is_none());
    let long = format!("HTTP/1.1 200 OK\r\nA: {}", "b".repeat(MAX_HEAD));
    assert!(matches!(head(&long, &get), Err(Error::HeadTooLarge)));
    assert!(head("HTTP/1.1 2OO OK\r\n\r\n", &get).is_err());
    assert!(head("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", &get).is_err());
}

#[test]
fn header_values_are_kept_exactly_and_in_order() {
    let h = head(
        "HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-Y: z\r\nSet-Cookie: b=2\r\nContent-Length: 0\r\n\r\n",
        &Method::GET,
    )
    .unwrap()
    .unwrap();
    let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
    assert_eq!(cookies, ["a=1", "b=2"]);
    assert_eq!(h.headers["x-y"], "z");
}

#[test]
fn chunked_bodies_decode_in_any_split_and_bad_ones_are_refused() {
    let wire =
        b"5;ext=\"q\"\r\nhello\r\n6\r\n world\r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\nY: 2\r\n\r\n";
    for step in [1, 2, 3, 7, 64, 1000] {
        let (data, clean) = decode(Framing::Chunked, wire, step).unwrap();
        assert_eq!(data, b"hello world0123456789", "step {step}");
        assert!(clean, "step {step}");
    }
    for bad in [
        &b"ZZ\r\nx\r\n0\r\n\r\n"[..],
        b"5\r\nhelloXX0\r\n\r\n",
        b"5 x\r\nhello\r\n0\r\n\r\n",
        b"11111111111111111\r\n",
        b";\r\n",
    ] {
        assert!(decode(Framing::Chunked, bad, 1000).is_err(), "{bad:?}");
    }
    let long_line = [b"5;".as_slice(), &[b'x'; MAX_CHUNK_LINE + 10]].concat();
    assert!(decode(Framing::Chunked, &long_line, 100).is_err());
}

#[test]
fn length_and_close_bodies_stop_where_they_should() {
    // Bytes past the length stay for the next response.
    let mut reader = BodyReader::new(Framing::Length(5));
    let mut buf = BytesMut::from(&b"helloHTTP/1.1"[..]);
    assert_eq!(reader.step(&mut buf).unwrap().unwrap(), "hello");
    assert!(reader.is_done());
    assert_eq!(&buf[..], b"HTTP/1.1");
    let (data, _) = decode(Framing::Close, b"all of it", 2).unwrap();
    assert_eq!(data, b"all of it");
    assert!(BodyReader::new(Framing::Length(0)).is_done());
    assert!(BodyReader::new(Framing::Empty).is_done());
}

#[test]
fn chunk_sizes_are_written_in_hex() {
    let mut out = [0u8; 16];
    assert_eq!(hex_len(0, &mut out), b"0");
    assert_eq!(hex_len(255, &mut out), b"ff");
    assert_eq!(hex_len(65_536, &mut out), b"10000");
}
