//! sessbackup: verified Redis backups.
pub mod aof;
pub mod cli;
pub mod config;
pub mod datadir;
pub mod drill;
pub mod fsutil;
pub mod live;
pub mod lock;
pub mod manifest;
pub mod pipeline;
pub mod rdb;
pub mod restore;
pub mod scratch;
pub mod secret;
pub mod source;
pub mod target;
pub mod tls;
