//! vCPU runner loops (filled in below).

/// One runner loop, bound to one CPU.
pub struct Runner {
    cpu: u32,
}

impl Runner {
    /// The CPU this runner runs on.
    pub fn cpu(&self) -> u32 {
        self.cpu
    }

    /// Asks the loop to exit at its next turn.
    pub fn request_exit(&self) {}

    /// One turn of the loop.
    pub fn poll(&self) -> super::RunnerPoll {
        super::RunnerPoll::Exit
    }
}
