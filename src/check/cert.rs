//! What a certificate says that an operator needs to know: whom it names,
//! who issued it, and until when it is valid. rustls checks certificates
//! but does not show their dates, so the few X.509 fields involved are read
//! here from the DER bytes by a small parser (no dependency for it): the
//! TBSCertificate's issuer, validity and subject, and of a name only its
//! common name and organisation. Anything it cannot read is `None`, never
//! a panic: the bytes come from the network.

/// The facts `check` reports of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facts {
    /// "CN=broker.example, O=Example" (or "(no name)").
    pub subject: String,
    pub issuer: String,
    /// Unix seconds.
    pub not_before: i64,
    pub not_after: i64,
}

/// One DER element: its tag, its content, and what follows it.
fn tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, header) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let end = header.checked_add(len)?;
    Some((tag, b.get(header..end)?, b.get(end..)?))
}

const SEQUENCE: u8 = 0x30;

/// The facts of a DER certificate, `None` when it does not read as one.
pub fn facts(der: &[u8]) -> Option<Facts> {
    let (tag, cert, _) = tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    // [0] version, when present.
    let (tag, _, after) = tlv(rest)?;
    if tag == 0xA0 {
        rest = after;
    }
    let mut next = |want: u8| -> Option<&[u8]> {
        let (tag, content, after) = tlv(rest)?;
        rest = after;
        (tag == want).then_some(content)
    };
    let _serial = next(0x02)?;
    let _signature = next(SEQUENCE)?;
    let issuer = next(SEQUENCE)?;
    let validity = next(SEQUENCE)?;
    let subject = next(SEQUENCE)?;
    let (t1, nb, after) = tlv(validity)?;
    let (t2, na, _) = tlv(after)?;
    Some(Facts {
        subject: name(subject),
        issuer: name(issuer),
        not_before: time(t1, nb)?,
        not_after: time(t2, na)?,
    })
}

/// A Name's common name and organisation: "CN=…, O=…".
fn name(mut sets: &[u8]) -> String {
    let mut parts = Vec::new();
    while let Some((_, set, after)) = tlv(sets) {
        sets = after;
        let mut attrs = set;
        while let Some((_, attr, after)) = tlv(attrs) {
            attrs = after;
            let Some((0x06, oid, value)) = tlv(attr) else {
                continue;
            };
            let label = match oid {
                [0x55, 0x04, 0x03] => "CN",
                [0x55, 0x04, 0x0A] => "O",
                _ => continue,
            };
            if let Some((_, text, _)) = tlv(value) {
                let shown: String = String::from_utf8_lossy(text)
                    .chars()
                    .filter(|c| !c.is_control())
                    .take(100)
                    .collect();
                parts.push(format!("{label}={shown}"));
            }
        }
    }
    if parts.is_empty() {
        "(no name)".to_string()
    } else {
        parts.join(", ")
    }
}

/// UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) as Unix
/// seconds.
fn time(tag: u8, b: &[u8]) -> Option<i64> {
    let s = std::str::from_utf8(b).ok()?.strip_suffix('Z')?;
    if !s.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> { s.get(r)?.parse().ok() };
    let (year, rest) = match (tag, s.len()) {
        (0x17, 12) => {
            let yy = num(0..2)?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, 2)
        }
        (0x18, 14) => (num(0..4)?, 4),
        _ => return None,
    };
    let month = num(rest..rest + 2)?;
    let day = num(rest + 2..rest + 4)?;
    let (h, m, sec) = (
        num(rest + 4..rest + 6)?,
        num(rest + 6..rest + 8)?,
        num(rest + 8..rest + 10)?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || h > 23 || m > 59 || sec > 60 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's
/// algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as a UTC date, "2026-12-11".
pub fn date(unix: i64) -> String {
    let z = unix.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1
    /// -nodes -days 3650 -subj "/O=frameflush/CN=cert test"`, as DER:
    /// notBefore 2026-12-01 08:06:36, notAfter 2036-11-28 08:06:36 UTC.
    const DER_HEX: &str = include_str!("cert_test.hex");

    fn der() -> Vec<u8> {
        let hex: String = DER_HEX.split_whitespace().collect();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn a_certificate_gives_its_names_and_dates() {
        let f = facts(&der()).unwrap();
        assert_eq!(f.subject, "O=frameflush, CN=cert test");
        assert_eq!(f.issuer, "O=frameflush, CN=cert test");
        assert_eq!(date(f.not_before), "2026-12-01");
        assert_eq!(date(f.not_after), "2036-11-28");
        assert_eq!(f.not_after - f.not_before, 3650 * 86_400);
    }

    #[test]
    fn bytes_that_are_not_a_certificate_give_none_and_never_panic() {
        let der = der();
        for cut in 0..der.len() {
            let _ = facts(&der[..cut]);
        }
        assert_eq!(facts(&[]), None);
        assert_eq!(facts(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]), None);
        let mut flipped = der.clone();
        for i in 0..flipped.len() {
            flipped[i] ^= 0xff;
            let _ = facts(&flipped);
            flipped[i] ^= 0xff;
        }
    }

    #[test]
    fn dates_convert_both_ways() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
        assert_eq!(date(11_017 * 86_400), "2000-03-01");
        assert_eq!(date(days_from_civil(2024, 2, 29) * 86_400), "2024-02-29");
        assert_eq!(time(0x17, b"491231235959Z"), time(0x18, b"20491231235959Z"));
        assert_eq!(
            time(0x17, b"500101000000Z"),
            Some(days_from_civil(1950, 1, 1) * 86_400)
        );
        assert_eq!(time(0x17, b"501301000000Z"), None);
        assert_eq!(time(0x18, b"2050010100000Z"), None);
    }
}
