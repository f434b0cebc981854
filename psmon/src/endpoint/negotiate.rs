//! What a `/metrics` client asks for: the format (`Accept`: OpenMetrics or
//! Prometheus' text format) and the coding (`Accept-Encoding: gzip`, which
//! Prometheus sends: at 10,000 entries the exposition is ~9 MB of
//! repetitive text, a few hundred KB compressed).

use std::io::Write;

use flate2::{Compression, write::GzEncoder};

/// Whether a request's `Accept` header asks for OpenMetrics (a media range
/// `application/openmetrics-text` not refused with `q=0`). Without the
/// header, or asking for anything else, the client gets the text format.
pub fn wants_openmetrics(accept: Option<&str>) -> bool {
    lists(accept, &["application/openmetrics-text"])
}

/// Whether a request's `Accept-Encoding` header accepts gzip (`gzip` or
/// `x-gzip`, not refused with `q=0`).
pub fn accepts_gzip(accept_encoding: Option<&str>) -> bool {
    lists(accept_encoding, &["gzip", "x-gzip"])
}

/// Whether a comma-separated header lists one of `names` (any case)
/// without `q=0`.
fn lists(header: Option<&str>, names: &[&str]) -> bool {
    header.is_some_and(|header| {
        header.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let name = parts.next().unwrap_or("");
            names.iter().any(|n| name.eq_ignore_ascii_case(n))
                && !parts.any(|p| {
                    p.strip_prefix("q=")
                        .and_then(|q| q.parse::<f32>().ok())
                        .is_some_and(|q| q <= 0.0)
                })
        })
    })
}

/// `body` compressed with gzip at the fastest level: the ratio differs
/// little on text this repetitive, the time does.
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = GzEncoder::new(Vec::with_capacity(body.len() / 8), Compression::fast());
    encoder.write_all(body)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use super::*;

    #[test]
    fn openmetrics_only_when_asked_for() {
        let prometheus = "application/openmetrics-text;version=1.0.0,\
                          application/openmetrics-text;version=0.0.1;q=0.75,\
                          text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(prometheus)));
        assert!(wants_openmetrics(Some("Application/OpenMetrics-Text")));
        assert!(!wants_openmetrics(None));
        assert!(!wants_openmetrics(Some("*/*")));
        assert!(!wants_openmetrics(Some("text/plain;version=0.0.4")));
        assert!(!wants_openmetrics(Some(
            "application/openmetrics-text; q=0, text/plain"
        )));
    }

    #[test]
    fn gzip_only_when_accepted() {
        assert!(accepts_gzip(Some("gzip")));
        assert!(accepts_gzip(Some("deflate, GZIP;q=0.8")));
        assert!(accepts_gzip(Some("x-gzip")));
        assert!(!accepts_gzip(None));
        assert!(!accepts_gzip(Some("identity")));
        assert!(!accepts_gzip(Some("br, gzip;q=0")));
        assert!(!accepts_gzip(Some("gzipped")));
    }

    #[test]
    fn gzip_gives_back_the_body() {
        let body = "psmon_entry_up{path=\"/usr/sbin/sshd\"} 1\n".repeat(1000);
        let packed = gzip(body.as_bytes()).unwrap();
        assert!(packed.len() < body.len() / 20, "{} bytes", packed.len());
        let mut unpacked = String::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_string(&mut unpacked)
            .unwrap();
        assert_eq!(unpacked, body);
    }
}
