//! The embedded broker's carrier: headers are a [`HeaderList`](crate::message::HeaderList),
//! kept as they are. A [`MemoryRecord`] owns its list, so the publish layer can replace
//! same-named headers before it is stored; the broker stores it once, shared, and every
//! [`MemoryMessage`] read from the partition points at that stored list (no copy per read).

use super::record::{MemoryMessage, MemoryRecord};
use crate::message::Headers;

crate::message::header_list_carrier!(MemoryRecord);

impl Headers for MemoryMessage {
    fn headers(&self) -> impl Iterator<Item = (&str, &[u8])> + '_ {
        self.headers.iter()
    }
}
