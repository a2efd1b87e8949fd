//! `ota-agent`: the device daemon of ota.
//!
//! A tokio shell around the update machine of [`ota_core`]: it moves bytes between the MQTT
//! connection, the HTTP downloader, the local cache, the journal and the installers, and lets
//! the core make every decision. The update machine itself arrives with the agent issue; today
//! this crate only re-exports the release verification the agent will use.

pub use ota_core::release;
