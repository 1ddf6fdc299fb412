use std::borrow::Cow;
use std::sync::Arc;
use std::time::SystemTime;

use crate::message::{system, HeaderList, IncomingMessage, OutgoingMessage, Receipt, Republish};

/// A record to publish to the embedded broker.
#[derive(Clone, Debug)]
pub struct MemoryRecord {
    pub(crate) topic: String,
    pub(crate) key: Option<Vec<u8>>,
    pub(crate) payload: Vec<u8>,
    pub(crate) headers: HeaderList,
    pub(crate) partition: Option<i32>,
    pub(crate) timestamp: Option<SystemTime>,
}

impl MemoryRecord {
    /// A record for `topic` with `payload`, no key, no headers.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Self {
        Self {
            topic: topic.into(),
            key: None,
            payload: payload.into(),
            headers: HeaderList::new(),
            partition: None,
            timestamp: None,
        }
    }
}

crate::message::record_builders!(MemoryRecord);

impl OutgoingMessage for MemoryRecord {
    fn system(&self) -> &'static str {
        system::MEMORY
    }

    fn destination(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> Option<i32> {
        self.partition
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }
}

/// Where the broker stored a published record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryReceipt {
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
}

impl Receipt for MemoryReceipt {
    fn partition(&self) -> Option<i32> {
        Some(self.partition)
    }
}

/// A record as stored in a partition.
#[derive(Debug)]
pub(crate) struct Stored {
    pub(crate) key: Option<Arc<[u8]>>,
    pub(crate) payload: Arc<[u8]>,
    pub(crate) headers: Arc<HeaderList>,
    pub(crate) timestamp: SystemTime,
}

/// A message delivered to a handler by a [`MemoryConsumer`](super::MemoryConsumer).
#[derive(Clone, Debug)]
pub struct MemoryMessage {
    pub(crate) topic: Arc<str>,
    pub(crate) partition: i32,
    pub(crate) offset: i64,
    pub(crate) group: Option<Arc<str>>,
    pub(crate) key: Option<Arc<[u8]>>,
    pub(crate) payload: Arc<[u8]>,
    pub(crate) headers: Arc<HeaderList>,
    pub(crate) timestamp: SystemTime,
    /// Which attempt the consumer core hands it for (1 = the first).
    pub(crate) attempt: u32,
}

impl MemoryMessage {
    /// Topic.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The partition, always known here; the same as
    /// [`IncomingMessage::partition`](crate::message::IncomingMessage::partition).
    pub fn partition(&self) -> Option<i32> {
        Some(self.partition)
    }

    /// Offset within the partition.
    pub fn offset(&self) -> i64 {
        self.offset
    }

    /// Key, if any.
    pub fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    /// Payload.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// Headers.
    pub fn headers(&self) -> &HeaderList {
        &self.headers
    }

    /// Creation timestamp.
    pub fn timestamp(&self) -> SystemTime {
        self.timestamp
    }
}

impl IncomingMessage for MemoryMessage {
    fn system(&self) -> &'static str {
        system::MEMORY
    }

    fn destination(&self) -> &str {
        &self.topic
    }

    fn partition(&self) -> Option<i32> {
        Some(self.partition)
    }

    fn consumer_group(&self) -> Option<&str> {
        self.group.as_deref()
    }

    fn created_at(&self) -> Option<SystemTime> {
        Some(self.timestamp)
    }

    /// The `message-id` header, else `{topic}/{partition}/{offset}` (SPEC §2).
    fn message_id(&self) -> Option<Cow<'_, str>> {
        match crate::message::header_id(self) {
            Some(id) => Some(Cow::Borrowed(id)),
            None => Some(Cow::Owned(crate::message::position_id(
                &self.topic,
                &[i64::from(self.partition), self.offset],
            ))),
        }
    }

    fn payload(&self) -> &[u8] {
        &self.payload
    }

    fn key(&self) -> Option<&[u8]> {
        self.key.as_deref()
    }

    fn offset(&self) -> Option<i64> {
        Some(self.offset)
    }

    /// The core's count of its retries in process (1 on the first delivery).
    fn delivery_attempt(&self) -> Option<u32> {
        Some(self.attempt)
    }

    fn set_delivery_attempt(&mut self, attempt: u32) {
        self.attempt = attempt;
    }
}

impl Republish for MemoryMessage {
    type Record = MemoryRecord;

    fn republish(&self, destination: &str) -> MemoryRecord {
        let mut headers = HeaderList::new();
        for (name, value) in self.headers.iter() {
            if !crate::message::republished_header(name) {
                headers.push_copy(name, value);
            }
        }
        MemoryRecord {
            topic: destination.to_owned(),
            key: self.key.as_deref().map(<[u8]>::to_vec),
            payload: self.payload.to_vec(),
            headers,
            partition: None,
            timestamp: None,
        }
    }
}
