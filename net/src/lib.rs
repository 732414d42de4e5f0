//! placeholder
#![no_std]
extern crate alloc;
