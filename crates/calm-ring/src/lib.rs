//! Data placement: consistent hashing with virtual nodes, rendezvous hashing,
//! preference lists.

#![forbid(unsafe_code)]
#![deny(missing_docs)]
