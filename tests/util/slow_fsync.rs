//! A slow disk for tests: an `LD_PRELOAD` shim, built by the test from a few
//! lines of C with the machine's `cc` into the test's directory, that makes
//! every `fsync` and `fdatasync` of the process sleep a given number of
//! microseconds before calling through to libc's (`dlsym(RTLD_NEXT)`). It
//! also counts the calls in a file, so that a test can prove the shim was
//! loaded and the disk was slow for real. (`scripts/bench` builds a shim of
//! its own for its storage sections.)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::TestEnv;

const SOURCE: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

static void slow(void) {
    const char *us = getenv("FRAMEFLUSH_SHIM_FSYNC_US");
    const char *log = getenv("FRAMEFLUSH_SHIM_FSYNC_LOG");
    if (log) {
        int fd = open(log, O_WRONLY | O_APPEND | O_CREAT, 0600);
        if (fd >= 0) { (void)write(fd, ".", 1); close(fd); }
    }
    if (us) usleep((useconds_t)atol(us));
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    slow();
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    slow();
    return real(fd);
}
"#;

/// The built shim and the delay it adds.
pub struct SlowFsync {
    pub lib: PathBuf,
    pub delay: Duration,
    log: PathBuf,
}

impl SlowFsync {
    /// Builds the shim in the test's directory (panics, naming what to
    /// install, when `cc` is missing).
    pub fn build(env: &TestEnv, delay: Duration) -> SlowFsync {
        let src = env.path("slow_fsync.c");
        let lib = env.path("slow_fsync.so");
        std::fs::write(&src, SOURCE).unwrap();
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&lib)
            .arg(&src)
            .arg("-ldl")
            .output()
            .expect(
                "cannot run cc: install a C compiler (apt-get install gcc) for the slow-disk tests",
            );
        assert!(
            out.status.success(),
            "cc could not build the slow-fsync shim: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SlowFsync {
            lib,
            delay,
            log: env.path("slow_fsync.calls"),
        }
    }

    /// Preloads the shim into the command's process.
    pub fn apply<'c>(&self, cmd: &'c mut Command) -> &'c mut Command {
        cmd.env("LD_PRELOAD", &self.lib)
            .env(
                "FRAMEFLUSH_SHIM_FSYNC_US",
                self.delay.as_micros().to_string(),
            )
            .env("FRAMEFLUSH_SHIM_FSYNC_LOG", &self.log)
    }

    /// The fsync/fdatasync calls the shim slowed down so far, in every
    /// process it was preloaded into.
    pub fn calls(&self) -> u64 {
        std::fs::metadata(&self.log).map_or(0, |m| m.len())
    }

    pub fn path(&self) -> &Path {
        &self.lib
    }
}
