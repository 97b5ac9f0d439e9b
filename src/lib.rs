//! sessbackup: verified Redis backups.
pub mod rdb;
