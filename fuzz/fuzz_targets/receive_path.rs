//! Arbitrary frame bytes into the whole receive path of a stack that has a listener and
//! an established connection: no panic, and the stack's memory stays bounded.
#![no_main]
use libfuzzer_sys::fuzz_target;
use userspace::fuzzing::ReceivePath;

fuzz_target!(|data: &[u8]| {
    thread_local! {
        static WORLD: std::cell::RefCell<ReceivePath> = std::cell::RefCell::new(ReceivePath::new());
    }
    WORLD.with(|w| w.borrow_mut().feed(data));
});
