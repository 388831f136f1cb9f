//! Wake-ups for live readers of the global log.

use tokio::sync::watch;

/// The sending side of append notifications, held by a backend.
///
/// A backend calls [`notify`](LogNotifier::notify) after each commit; every
/// [`LogWatcher`] made from it wakes. Notifications coalesce: a watcher that was busy
/// sees one wake-up for many appends, which is all a reader needs (it then reads
/// everything after its position).
///
/// # Examples
/// ```
/// use cqrs_core::LogNotifier;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let notifier = LogNotifier::new();
/// let mut watcher = notifier.watcher();
/// watcher.mark_seen();
/// notifier.notify();
/// watcher.changed().await; // returns at once: an append happened since mark_seen
/// # }
/// ```
#[derive(Debug)]
pub struct LogNotifier {
    tx: watch::Sender<u64>,
}

impl LogNotifier {
    /// A notifier with no watchers yet.
    pub fn new() -> Self {
        LogNotifier {
            tx: watch::Sender::new(0),
        }
    }

    /// Wakes every watcher.
    pub fn notify(&self) {
        self.tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// A new watcher of this notifier.
    pub fn watcher(&self) -> LogWatcher {
        LogWatcher {
            rx: Some(self.tx.subscribe()),
        }
    }
}

impl Default for LogNotifier {
    fn default() -> Self {
        Self::new()
    }
}

/// The receiving side of append notifications: a live reader waits on it between reads.
///
/// Call [`mark_seen`](LogWatcher::mark_seen) *before* reading the log, then
/// [`changed`](LogWatcher::changed) after reaching its end: an append that lands between
/// the two is not missed.
#[derive(Debug)]
pub struct LogWatcher {
    rx: Option<watch::Receiver<u64>>,
}

impl LogWatcher {
    /// A watcher that never wakes, for stores that cannot notify: readers poll instead.
    pub fn polling() -> Self {
        LogWatcher { rx: None }
    }

    /// Whether this watcher can wake at all (false for [`LogWatcher::polling`]).
    pub fn can_wake(&self) -> bool {
        self.rx.is_some()
    }

    /// Marks every notification so far as seen.
    pub fn mark_seen(&mut self) {
        if let Some(rx) = &mut self.rx {
            rx.borrow_and_update();
        }
    }

    /// Waits until an append was notified after the last [`mark_seen`](Self::mark_seen).
    ///
    /// Never returns for a polling watcher or once the store is gone; race it against a
    /// poll interval.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping the future loses no notification.
    pub async fn changed(&mut self) {
        match &mut self.rx {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    // The store was dropped: nothing will ever be appended again.
                    self.rx = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}
