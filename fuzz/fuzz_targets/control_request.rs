//! The control socket's request parser (`control::parse_request`, the one
//! the server runs on each request line) on arbitrary bytes, and the
//! client's response parser on the same bytes.
//!
//! Properties: no panic; a request that parses re-encodes to JSON that
//! parses back to the same request (what the client sends is what the
//! server reads); the same for responses, and a status response renders
//! as the client's table and as Prometheus text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfailover::control::{parse_request, Request, Response, MAX_REQUEST};
use vfailover::status::{render_prometheus, render_table};

fuzz_target!(|data: &[u8]| {
    // The server never reads more than MAX_REQUEST bytes before the '\n'.
    let line = &data[..data.len().min(MAX_REQUEST)];
    let line = line.split(|&b| b == b'\n').next().unwrap_or(line);
    match parse_request(line) {
        Ok(request) => {
            let _ = (request.command(), request.needs_root());
            let wire = serde_json::to_vec(&request).expect("a request encodes");
            assert!(!wire.contains(&b'\n'), "a request must fit one line");
            let again = parse_request(&wire).expect("an encoded request parses");
            assert_eq!(again, request);
        }
        Err(message) => assert!(!message.is_empty()),
    }
    if let Ok(response) = serde_json::from_slice::<Response>(data) {
        let wire = serde_json::to_vec(&response).expect("a response encodes");
        let again: Response = serde_json::from_slice(&wire).expect("an encoded response parses");
        match &response {
            // `vfailover status` and `metrics` render what the daemon sent.
            // Floats may move by an ulp through serde_json: no equality.
            Response::Status(status) => {
                let _ = render_table(status);
                let _ = render_prometheus(status);
            }
            _ => assert_eq!(again, response),
        }
    }
    let _ = serde_json::from_slice::<Request>(data);
});
