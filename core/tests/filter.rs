//! The device filter language: parsing, precedence, errors with columns, hostile input.

use ota_core::filter::{Field, Filter, FilterError, Flag, MAX_DEPTH, MAX_FILTER_LEN};

fn cmp(field: Field, negated: bool, value: &str) -> Filter {
    Filter::Compare {
        field,
        negated,
        value: value.into(),
    }
}

#[test]
fn parses_the_documented_forms() {
    assert_eq!(
        Filter::parse("hw=gw-a and label:region=eu").unwrap(),
        Filter::And(
            Box::new(cmp(Field::Hardware, false, "gw-a")),
            Box::new(cmp(Field::Label("region".into()), false, "eu")),
        )
    );
    assert_eq!(
        Filter::parse("version=2.0.0").unwrap(),
        cmp(Field::Version, false, "2.0.0")
    );
    assert_eq!(Filter::parse("online").unwrap(), Filter::Flag(Flag::Online));
    assert_eq!(
        Filter::parse("not online").unwrap(),
        Filter::Not(Box::new(Filter::Flag(Flag::Online)))
    );
    assert_eq!(
        Filter::parse("  version != \"2.0 beta\"  ").unwrap(),
        cmp(Field::Version, true, "2.0 beta")
    );
    assert_eq!(Filter::parse("all").unwrap(), Filter::Flag(Flag::All));
}

#[test]
fn precedence_is_not_and_or() {
    // a or b and not c  ==  a or (b and (not c))
    let f = Filter::parse("id=a or id=b and not drifted").unwrap();
    assert_eq!(f.to_string(), "(id=a or (id=b and not drifted))");
    let f = Filter::parse("(id=a or id=b) and online").unwrap();
    assert_eq!(f.to_string(), "((id=a or id=b) and online)");
}

#[test]
fn errors_name_the_column() {
    let e = Filter::parse("hw=gw-a and )").unwrap_err();
    assert!(
        matches!(e, FilterError::UnexpectedToken { column: 13, .. }),
        "{e:?}"
    );
    assert!(
        e.to_string()
            .starts_with("unexpected token ')' at column 13"),
        "{e}"
    );

    let e = Filter::parse("hw=gw-a and").unwrap_err();
    assert_eq!(
        e.to_string(),
        "unexpected end of filter at column 12, expected a field, a flag, 'not' or '('"
    );

    let e = Filter::parse("(online").unwrap_err();
    assert!(
        matches!(e, FilterError::UnexpectedEnd { column: 8, .. }),
        "{e:?}"
    );

    let e = Filter::parse("online online").unwrap_err();
    assert!(
        matches!(e, FilterError::UnexpectedToken { column: 8, .. }),
        "{e:?}"
    );

    let e = Filter::parse("colour=red").unwrap_err();
    assert!(
        matches!(e, FilterError::UnknownField { column: 1, .. }),
        "{e:?}"
    );

    let e = Filter::parse("online=yes").unwrap_err();
    assert!(
        matches!(e, FilterError::FlagWithValue { column: 1, .. }),
        "{e:?}"
    );

    let e = Filter::parse("online and hw").unwrap_err();
    assert!(
        matches!(e, FilterError::MissingComparison { column: 12, .. }),
        "{e:?}"
    );

    let e = Filter::parse("hw=").unwrap_err();
    assert!(
        matches!(e, FilterError::UnexpectedEnd { column: 4, .. }),
        "{e:?}"
    );

    let e = Filter::parse("hw=gw-a & online").unwrap_err();
    assert_eq!(e, FilterError::InvalidCharacter { ch: '&', column: 9 });

    let e = Filter::parse("hw=\"gw-a").unwrap_err();
    assert_eq!(e, FilterError::UnterminatedString { column: 4 });

    // Columns count characters, not bytes.
    let e = Filter::parse("hw=\"é\" )").unwrap_err();
    assert!(
        matches!(e, FilterError::UnexpectedToken { column: 8, .. }),
        "{e:?}"
    );

    assert_eq!(Filter::parse("   ").unwrap_err(), FilterError::Empty);
    assert!(matches!(
        Filter::parse("and").unwrap_err(),
        FilterError::UnexpectedToken { column: 1, .. }
    ));
    assert!(matches!(
        Filter::parse("hw==x").unwrap_err(),
        FilterError::UnexpectedToken { column: 4, .. }
    ));
}

#[test]
fn hostile_input_is_bounded() {
    // Deep parentheses: refused at the limit, no stack overflow.
    let deep = format!("{}online{}", "(".repeat(2000), ")".repeat(2000));
    assert!(matches!(
        Filter::parse(&deep).unwrap_err(),
        FilterError::TooDeep { column, limit: MAX_DEPTH } if column == MAX_DEPTH + 1
    ));
    let nots = "not ".repeat(1000) + "online";
    assert!(matches!(
        Filter::parse(&nots).unwrap_err(),
        FilterError::TooDeep { .. }
    ));
    // Just inside the limit is fine.
    let ok = format!("{}online{}", "(".repeat(MAX_DEPTH), ")".repeat(MAX_DEPTH));
    assert_eq!(Filter::parse(&ok).unwrap(), Filter::Flag(Flag::Online));

    let long = "online or ".repeat(MAX_FILTER_LEN / 10 + 1) + "online";
    assert!(matches!(
        Filter::parse(&long).unwrap_err(),
        FilterError::TooLong { .. }
    ));

    // Long flat chains within the size limit parse (iteratively).
    let chain = "online or ".repeat(300) + "online";
    assert!(Filter::parse(&chain).is_ok());

    // Arbitrary bytes never panic.
    for input in [
        "\0", "\"\\", "!", "label:", "label:=x", "((((", "))))", "=", "!=x", "\u{202e}",
    ] {
        assert!(Filter::parse(input).is_err(), "{input:?}");
    }
}

#[test]
fn display_is_reparseable() {
    for s in [
        "hw=gw-a and label:region=eu",
        "not (online or drifted) and version!=\"2 0\"",
        "label:\"my key\"=\"a\\\"b\"",
        "id=\"and\"",
        "digest=ab* or result=rolled-back",
    ] {
        let f = Filter::parse(s).unwrap();
        assert_eq!(Filter::parse(&f.to_string()).unwrap(), f, "{s} -> {f}");
    }
}
