//! Validating the seed's `OrderCreated` event against its compiled schema.
//!
//! ```text
//! cargo bench --features schema --bench schema
//! ```
//!
//! Cases: a valid v1 event against v1; a v2 event on a consumer that knows only v1 (validated
//! as v1); an invalid one (its error built, with the path and the complaint). Each parses the
//! payload and validates it, as the layer does per message.

use std::hint::black_box;

use criterion::Criterion;
use eventscope::message::HeaderList;
use eventscope::schema::Schemas;

const V1: &str = include_str!("../examples/schemas/order-created.v1.json");

/// The seed's envelope, as the order pipeline publishes it.
const ORDER: &str = r#"{"eventId":"0192f0c1-7d2a-7c3e-9a51-5b3e2d1f4a10","eventType":"OrderCreated","eventVersion":1,"timestamp":"2024-05-01T10:00:00.000Z","correlationId":"0192f0c1-7d2a-7c3e-9a51-5b3e2d1f4a11","causationId":null,"data":{"orderId":"order-1042","customerId":"customer-7","amountCents":4599,"items":[{"sku":"sku-1","quantity":2},{"sku":"sku-9","quantity":1}]}}"#;

fn main() {
    let schemas = Schemas::builder()
        .schema("OrderCreated", 1, V1)
        .build()
        .expect("the schema compiles");
    let headers = HeaderList::new();
    let v2 = ORDER
        .replace(r#""eventVersion":1"#, r#""eventVersion":2"#)
        .replace(
            r#""amountCents":4599"#,
            r#""amountCents":4599,"currency":"EUR""#,
        );
    let invalid = ORDER.replace(r#""amountCents":4599"#, r#""amountCents":"4599""#);
    assert!(schemas.validate(&headers, ORDER.as_bytes()).is_ok());
    assert!(schemas.validate(&headers, v2.as_bytes()).is_ok());
    assert!(schemas.validate(&headers, invalid.as_bytes()).is_err());

    let mut criterion = Criterion::default().configure_from_args();
    {
        let mut group = criterion.benchmark_group("schema");
        group.bench_function("order-created-v1", |b| {
            b.iter(|| schemas.validate(&headers, black_box(ORDER.as_bytes())))
        });
        group.bench_function("order-created-v2-on-v1", |b| {
            b.iter(|| schemas.validate(&headers, black_box(v2.as_bytes())))
        });
        group.bench_function("order-created-invalid", |b| {
            b.iter(|| schemas.validate(&headers, black_box(invalid.as_bytes())))
        });
        group.finish();
    }
    criterion.final_summary();
}
