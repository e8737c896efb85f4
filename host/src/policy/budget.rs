//! The CPU budget of one policy call, charged in the worker thread's CPU
//! time.
//!
//! Wasmtime's epochs tick in wall time (one thread, one tick a millisecond).
//! On a busy machine a worker can wait longer than a whole budget to be
//! scheduled again, and a trivial call would be stopped for time it never
//! ran. So a wall-time deadline only prompts a look at the thread's CPU
//! clock:
//!
//! - the first deadline comes after half the budget in wall time; from then
//!   the call is charged that half, whatever it used, and the thread's CPU
//!   clock is read;
//! - at every later deadline the call is charged the CPU time used since
//!   that reading, and is stopped once the whole budget is spent.
//!
//! A stopped call has used at least half its budget in CPU time, and a call
//! that spins is stopped after about its budget. Calls that end before the
//! first deadline, nearly all, never read the clock (a system call).

use std::time::Duration;

use wasmtime::UpdateDeadline;

use super::engine::EPOCH_TICK;

/// The budget of the call running in a store.
#[derive(Debug)]
pub struct Budget {
    limit: Duration,
    /// The thread's CPU clock at the call's first deadline.
    mark: Option<Duration>,
}

impl Budget {
    pub fn new(limit: Duration) -> Budget {
        Budget { limit, mark: None }
    }

    /// A call starts: the epoch ticks to its first deadline.
    pub fn start(&mut self) -> u64 {
        self.mark = None;
        ticks(self.limit / 2)
    }

    /// A deadline has passed: more ticks, or an interrupt that stops the
    /// call with a trap.
    pub fn on_deadline(&mut self) -> UpdateDeadline {
        let half = self.limit / 2;
        let Some(now) = thread_cpu() else {
            return UpdateDeadline::Interrupt;
        };
        let used = match self.mark {
            None => {
                self.mark = Some(now);
                Duration::ZERO
            }
            Some(mark) => now.saturating_sub(mark),
        };
        if used >= half {
            return UpdateDeadline::Interrupt;
        }
        UpdateDeadline::Continue(ticks(half - used))
    }
}

fn ticks(d: Duration) -> u64 {
    u64::try_from(d.as_nanos() / EPOCH_TICK.as_nanos())
        .unwrap_or(u64::MAX)
        .max(1)
}

/// The CPU time the calling thread has used.
#[cfg(target_os = "linux")]
fn thread_cpu() -> Option<Duration> {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Some(Duration::new(
        u64::try_from(t.tv_sec).ok()?,
        u32::try_from(t.tv_nsec).ok()?,
    ))
}

/// Without a thread CPU clock the first deadline stops the call: the budget
/// is half of it in wall time.
#[cfg(not(target_os = "linux"))]
fn thread_cpu() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spin(d: Duration) {
        let started = std::time::Instant::now();
        while started.elapsed() < d {
            std::hint::black_box(0u64);
        }
    }

    #[test]
    fn a_call_is_stopped_once_it_has_spent_its_budget_in_cpu_time() {
        let mut budget = Budget::new(Duration::from_millis(20));
        assert_eq!(budget.start(), 10);
        let started = std::time::Instant::now();
        for _ in 0..100 {
            match budget.on_deadline() {
                UpdateDeadline::Continue(t) => spin(EPOCH_TICK * u32::try_from(t).unwrap()),
                UpdateDeadline::Interrupt => {
                    assert!(started.elapsed() >= Duration::from_millis(10));
                    return;
                }
                _ => panic!("a budget only continues or interrupts"),
            }
        }
        panic!("the budget did not stop a spinning call");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn time_spent_off_the_cpu_is_not_charged() {
        let mut budget = Budget::new(Duration::from_millis(20));
        budget.start();
        for _ in 0..5 {
            assert!(matches!(budget.on_deadline(), UpdateDeadline::Continue(_)));
            std::thread::sleep(Duration::from_millis(15));
        }
        assert!(matches!(budget.on_deadline(), UpdateDeadline::Continue(_)));
    }
}
