//! `OrderCreated` v1 and v2 side by side (examples/schemas): a consumer that knows only v1
//! accepts v2 events, because v2 only adds an optional field and the v1 schema does not forbid
//! unknown fields.

use eventscope::message::HeaderList;
use eventscope::schema::{Checked, SchemaErrorKind, Schemas};

const V1: &str = include_str!("../examples/schemas/order-created.v1.json");
const V2: &str = include_str!("../examples/schemas/order-created.v2.json");

fn event(version: u32, currency: Option<&str>) -> String {
    let currency = currency
        .map(|c| format!(r#","currency":"{c}""#))
        .unwrap_or_default();
    format!(
        r#"{{"eventId":"e-1","eventType":"OrderCreated","eventVersion":{version},"timestamp":"2024-05-01T10:00:00.000Z","correlationId":"c-1","data":{{"orderId":"o-1","customerId":"cu-1","amountCents":1250{currency},"items":[{{"sku":"s-1","quantity":1}}]}}}}"#
    )
}

fn check(schemas: &Schemas, payload: &str) -> Result<Checked, SchemaErrorKind> {
    schemas
        .validate(&HeaderList::new(), payload.as_bytes())
        .map_err(|e| e.kind())
}

#[test]
fn a_v1_consumer_accepts_v2_events() {
    let v1_consumer = Schemas::builder()
        .schema("OrderCreated", 1, V1)
        .build()
        .unwrap();
    assert_eq!(check(&v1_consumer, &event(1, None)), Ok(Checked::Valid));
    assert_eq!(
        check(&v1_consumer, &event(2, Some("EUR"))),
        Ok(Checked::Valid)
    );
    // A field v1 does not know is not its business, even when v2 would refuse its value.
    assert_eq!(
        check(&v1_consumer, &event(2, Some("euro"))),
        Ok(Checked::Valid)
    );
    // What v1 requires, v2 events must still carry.
    let without_items =
        event(2, Some("EUR")).replace(r#","items":[{"sku":"s-1","quantity":1}]"#, "");
    assert_eq!(
        check(&v1_consumer, &without_items),
        Err(SchemaErrorKind::Schema)
    );
}

#[test]
fn a_v2_consumer_validates_each_version_with_its_own_schema() {
    let v2_consumer = Schemas::builder()
        .schema("OrderCreated", 1, V1)
        .schema("OrderCreated", 2, V2)
        .build()
        .unwrap();
    assert_eq!(check(&v2_consumer, &event(1, None)), Ok(Checked::Valid));
    assert_eq!(
        check(&v2_consumer, &event(2, Some("EUR"))),
        Ok(Checked::Valid)
    );
    assert_eq!(check(&v2_consumer, &event(2, None)), Ok(Checked::Valid));
    assert_eq!(
        check(&v2_consumer, &event(2, Some("euro"))),
        Err(SchemaErrorKind::Schema)
    );
    let error = v2_consumer
        .validate(&HeaderList::new(), event(2, Some("euro")).as_bytes())
        .unwrap_err();
    assert_eq!(error.path(), Some("/data/currency"));
    assert!(error
        .message()
        .starts_with("OrderCreated v2: /data/currency: "));
    // A v3 event is read as the newest version this consumer knows.
    assert_eq!(
        check(&v2_consumer, &event(3, Some("euro"))),
        Err(SchemaErrorKind::Schema)
    );
    assert_eq!(
        check(&v2_consumer, &event(3, Some("EUR"))),
        Ok(Checked::Valid)
    );
}

#[test]
fn exact_versions_make_newer_events_unknown() {
    let strict = Schemas::builder()
        .schema("OrderCreated", 1, V1)
        .exact_versions()
        .build()
        .unwrap();
    assert_eq!(check(&strict, &event(1, None)), Ok(Checked::Valid));
    assert_eq!(check(&strict, &event(2, Some("EUR"))), Ok(Checked::Unknown));
}
