//! The caller lookup as calls use it: the configured source (HTTP hook and/or CSV table) and
//! the table, swapped whole on reload so a call never sees half a file.
use std::sync::{Arc, RwLock};

use crate::ivr::caller::{CallerProfile, LookupStatus};
use crate::routing::customers::{CustomerLookup, CustomerTable};

pub struct Customers {
    lookup: CustomerLookup,
    table: RwLock<Option<Arc<CustomerTable>>>,
}

impl Customers {
    pub fn new(lookup: CustomerLookup, table: Option<CustomerTable>) -> Self {
        Customers {
            lookup,
            table: RwLock::new(table.map(Arc::new)),
        }
    }

    /// Replaces the table (a reload that parsed).
    pub fn replace_table(&self, table: CustomerTable) {
        let mut t = self.table.write().unwrap_or_else(|p| p.into_inner());
        *t = Some(Arc::new(table));
    }

    /// Never fails: an unreachable source falls back as configured.
    pub async fn lookup(&self, raw_number: &str) -> (CallerProfile, LookupStatus) {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner()).clone();
        self.lookup
            .lookup(table.as_deref(), raw_number, chrono::Utc::now())
            .await
    }
}
