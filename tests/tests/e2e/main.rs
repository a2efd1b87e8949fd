//! The one integration test binary of ota-e2e. Each module is a group of tests.

mod repo;
