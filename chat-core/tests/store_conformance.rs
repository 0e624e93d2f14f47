//! The store conformance suite (chat-testkit's `store_conformance`) run against the
//! `MemoryStore`, each case on a store of its own.

use chat_core::{MemoryStore, Store};
use chat_testkit::store_conformance::StoreSubject;

struct Memory(MemoryStore);

impl StoreSubject for Memory {
    fn store(&self) -> &dyn Store {
        &self.0
    }
}

chat_testkit::store_conformance!(async { Memory(MemoryStore::new()) });
