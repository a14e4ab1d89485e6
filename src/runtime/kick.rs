//! Waking a core's loop from another task on the same core.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A one-bit, single-threaded notification: tasks on the core (mesh
/// receivers, for example) set it when they leave work for the loop; the
/// loop waits on it while parked.
#[derive(Default)]
pub struct Kick {
    set: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Kick {
    /// Marks work pending and wakes the loop if it is waiting.
    pub fn kick(&self) {
        self.set.set(true);
        if let Some(w) = self.waker.borrow_mut().take() {
            w.wake();
        }
    }

    /// Clears and returns the pending bit.
    pub fn take(&self) -> bool {
        self.set.replace(false)
    }

    /// Resolves when [`Kick::kick`] is called (or was called since the last
    /// [`Kick::take`]).
    pub fn wait(&self) -> KickWait<'_> {
        KickWait(self)
    }
}

/// Future returned by [`Kick::wait`].
pub struct KickWait<'a>(&'a Kick);

impl Future for KickWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0.set.get() {
            return Poll::Ready(());
        }
        *self.0.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}
