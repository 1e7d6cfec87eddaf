//! Phone number normalisation, so one subscriber maps to one opt-out row however the
//! number was written (`+1 (555) 010-0001`, `tel:+1-555-010-0001`, `<sip:+15550100001@trunk>`).

/// Characters people and trunks use to make numbers readable (RFC 3966 visual separators
/// plus whitespace and '/'); they carry no meaning and are dropped.
fn is_visual_separator(c: char) -> bool {
    c.is_whitespace() || matches!(c, '-' | '.' | '(' | ')' | '/')
}

/// Removes `scheme` from the front of `s` ignoring ASCII case, if it is there.
fn strip_scheme<'a>(s: &'a str, scheme: &str) -> Option<&'a str> {
    let head = s.get(..scheme.len())?;
    if head.eq_ignore_ascii_case(scheme) {
        s.get(scheme.len()..)
    } else {
        None
    }
}

/// Canonical form of a phone number or a `tel:`/`sip:`/`sips:` URI's user part.
///
/// Takes the part inside `<...>` if present, drops the scheme, anything from `@`, `;` or `?` on
/// (host, parameters, headers), and visual separators; keeps a '+' only as the first character.
/// Never fails: input that is not a number comes back cleaned but otherwise unchanged
/// (`anonymous` stays `anonymous`), and callers decide whether that is usable.
pub fn normalise_number(raw: &str) -> String {
    let mut s = raw.trim();
    if let Some((_, rest)) = s.split_once('<') {
        s = rest.split_once('>').map_or(rest, |(inner, _)| inner).trim();
    }
    for scheme in ["tel:", "sips:", "sip:"] {
        if let Some(rest) = strip_scheme(s, scheme) {
            s = rest;
            break;
        }
    }
    if let Some(end) = s.find(['@', ';', '?']) {
        s = s.get(..end).unwrap_or(s);
    }

    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if is_visual_separator(c) {
            continue;
        }
        if c == '+' && !out.is_empty() {
            continue;
        }
        out.push(c);
    }
    out
}

/// Whether a normalised number can identify a subscriber (at least one digit), so that
/// `anonymous` or an empty From user never lands on the opt-out list.
pub(crate) fn is_usable_number(normalised: &str) -> bool {
    normalised.chars().any(|c| c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_visual_separators_and_keeps_leading_plus() {
        assert_eq!(normalise_number("+1 (555) 010-0001"), "+15550100001");
        assert_eq!(normalise_number("  +44 20.7946.0000 "), "+442079460000");
        assert_eq!(normalise_number("555/010\t0001"), "5550100001");
        assert_eq!(normalise_number("5550100001"), "5550100001");
    }

    #[test]
    fn plus_only_counts_at_the_start() {
        assert_eq!(normalise_number("+1+555+0100001"), "+15550100001");
        assert_eq!(normalise_number("1555+0100001"), "15550100001");
        assert_eq!(normalise_number("(+1) 555"), "+1555");
    }

    #[test]
    fn takes_user_part_of_tel_and_sip_uris() {
        assert_eq!(
            normalise_number("tel:+1-555-010-0001;phone-context=example.com"),
            "+15550100001"
        );
        assert_eq!(
            normalise_number("sip:+15550100001@trunk.example.com;user=phone"),
            "+15550100001"
        );
        assert_eq!(
            normalise_number("SIPS:5550100001@10.0.0.1:5061"),
            "5550100001"
        );
        assert_eq!(
            normalise_number("\"Alice\" <sip:+1 555 010 0001@pbx>;tag=abc"),
            "+15550100001"
        );
        assert_eq!(normalise_number("<tel:+15550100001>"), "+15550100001");
        assert_eq!(normalise_number("sip:5550100001?X-Header=1"), "5550100001");
    }

    #[test]
    fn odd_input_does_not_panic_and_is_flagged_unusable() {
        for raw in [
            "",
            "   ",
            "<",
            ">",
            "<>",
            "sip:",
            "tel:",
            "@",
            "+",
            "anonymous",
            "sip:anonymous@anonymous.invalid",
            "é<ü>ß",
            "<sip:",
        ] {
            let n = normalise_number(raw);
            assert!(!is_usable_number(&n), "{raw:?} -> {n:?} should be unusable");
        }
        assert_eq!(
            normalise_number("sip:anonymous@anonymous.invalid"),
            "anonymous"
        );
        assert!(is_usable_number(&normalise_number("*98#")));
        assert_eq!(normalise_number("*98#"), "*98#");
    }

    #[test]
    fn equal_numbers_in_different_spellings_normalise_alike() {
        let spellings = [
            "+1 (555) 010-0001",
            "+15550100001",
            "tel:+1-555-010-0001",
            "sip:+15550100001@trunk;user=phone",
            "<sip:+1.555.010.0001@pbx>",
        ];
        for s in spellings {
            assert_eq!(normalise_number(s), normalise_number(spellings[0]), "{s}");
        }
        assert_ne!(
            normalise_number("+15550100001"),
            normalise_number("15550100001")
        );
    }
}
