//! The publish-side schema layer: an event its own schema rejects goes back to the caller as
//! an error, and nothing reaches the broker.

use std::borrow::Cow;

use eventscope::memory::{MemoryBroker, MemoryRecord};
use eventscope::message::{HeaderList, Headers, HeadersMut, OutgoingMessage};
use eventscope::metrics::{label, name, Metrics};
use eventscope::publish::PublishLayer;
use eventscope::schema::{SchemaError, SchemaErrorKind, Schemas, ValidateOutgoingLayer};
use tower::{ServiceBuilder, ServiceExt};

const V2: &str = include_str!("../examples/schemas/order-created.v2.json");

/// An outgoing event that exposes its payload, turned into the broker's record when sent.
#[derive(Clone, Debug)]
struct Event {
    headers: HeaderList,
    payload: Vec<u8>,
}

impl Headers for Event {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter()
    }
}

impl HeadersMut for Event {
    fn set_header(&mut self, name: &str, value: String) {
        self.headers.set_header(name, value);
    }
    fn remove_header(&mut self, name: &str) {
        self.headers.remove(name);
    }
}

impl OutgoingMessage for Event {
    fn system(&self) -> &'static str {
        "memory"
    }
    fn destination(&self) -> &str {
        "orders"
    }
    fn message_id(&self) -> Option<Cow<'_, str>> {
        self.header_str("message-id").map(Cow::Borrowed)
    }
    fn body_size(&self) -> Option<usize> {
        Some(self.payload.len())
    }
    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

impl From<Event> for MemoryRecord {
    fn from(event: Event) -> Self {
        let mut record = MemoryRecord::new("orders", event.payload);
        for (name, value) in event.headers.iter() {
            record = record.header_bytes(name, value.to_vec());
        }
        record
    }
}

fn event(currency: &str) -> Event {
    Event {
        headers: HeaderList::new(),
        payload: format!(
            r#"{{"eventId":"e-1","eventType":"OrderCreated","eventVersion":2,"timestamp":"2024-05-01T10:00:00.000Z","correlationId":"c-1","data":{{"orderId":"o-1","customerId":"cu-1","amountCents":1,"currency":"{currency}","items":[{{"sku":"s","quantity":1}}]}}}}"#
        )
        .into_bytes(),
    }
}

#[tokio::test]
async fn an_event_its_schema_rejects_is_not_sent() {
    let broker = MemoryBroker::new();
    broker.create_topic("orders", 1).unwrap();
    let metrics = Metrics::new();
    let schemas = Schemas::builder()
        .schema("OrderCreated", 2, V2)
        .build()
        .unwrap();
    let publisher = ServiceBuilder::new()
        .layer(PublishLayer::new(metrics.clone()))
        .layer(ValidateOutgoingLayer::new(schemas))
        .service(broker.publisher().map_request(MemoryRecord::from));

    let sent = publisher.clone().oneshot(event("EUR")).await;
    assert!(sent.is_ok(), "{:?}", sent.err());
    assert_eq!(broker.high_watermark("orders", 0), Some(1));

    let error = publisher.clone().oneshot(event("euro")).await.unwrap_err();
    let error = error.downcast::<SchemaError>().expect("a SchemaError");
    assert_eq!(error.kind(), SchemaErrorKind::Schema);
    assert_eq!(error.path(), Some("/data/currency"));
    let undecodable = Event {
        headers: HeaderList::new(),
        payload: b"\xff\xfe".to_vec(),
    };
    let error = publisher.oneshot(undecodable).await.unwrap_err();
    assert_eq!(
        error.downcast::<SchemaError>().unwrap().kind(),
        SchemaErrorKind::Decode
    );
    // Nothing more reached the broker.
    assert_eq!(broker.high_watermark("orders", 0), Some(1));
    // Inside the publish layer, the refusals are failed sends (never consumer "invalid" ones).
    let text = metrics.encode();
    let failed: f64 = text
        .lines()
        .filter(|l| {
            l.starts_with(name::SENT_MESSAGES)
                && !l.contains(&format!(r#"{}="""#, label::ERROR_TYPE))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(failed, 2.0, "{text}");
    assert!(!text
        .lines()
        .any(|l| l.starts_with(name::INVALID_MESSAGES) && !l.starts_with('#')));
}
