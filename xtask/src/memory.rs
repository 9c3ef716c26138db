//! Peak memory of a measured phase: the host's resident set (CPU backends) or the device memory
//! in use (CUDA), each read from the system rather than estimated.
//!
//! - Host: the kernel's high-water mark of the resident set (`VmHWM`, reset through
//!   `/proc/self/clear_refs`) and, where phases share one call, samples every 10 ms.
//! - CUDA: the device's memory in use as the driver reports it (`cuMemGetInfo`: total − free,
//!   the figure `nvidia-smi` shows, the CUDA context and burn's memory pools included), sampled
//!   every 5 ms on a thread bound to the primary context burn computes in, and once more when the
//!   phase ends. PyTorch's side of `cargo xtask gpu-check` measures the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dllm_model::backend::BackendKind;

/// Samples the process's resident set every 10 ms on a thread.
pub struct RssMonitor {
    samples: Arc<Mutex<Vec<(Instant, u64)>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssMonitor {
    /// Starts sampling.
    pub fn start() -> Self {
        let samples = Arc::new(Mutex::new(vec![(Instant::now(), resident_bytes())]));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (samples, stop) = (samples.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let rss = resident_bytes();
                    samples
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push((Instant::now(), rss));
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Self {
            samples,
            stop,
            thread: Some(thread),
        }
    }

    /// The largest sample in `[from, to]`.
    pub fn peak(&self, from: Instant, to: Instant) -> u64 {
        let samples = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        samples
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|&(_, rss)| rss)
            .max()
            .unwrap_or(0)
    }
}

impl Drop for RssMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The resident set of this process in bytes (`/proc/self/statm`; 0 where it cannot be read).
pub fn resident_bytes() -> u64 {
    let pages = std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Starts a new high-water mark of the resident set (`/proc/self/clear_refs`, Linux 4.0+); the
/// kernel then tracks the exact peak, however short, that 10 ms samples can miss.
pub fn reset_high_water_mark() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The resident set's high-water mark since the last [`reset_high_water_mark`], bytes
/// (`VmHWM`; 0 where it cannot be read, the samples then stand alone).
pub fn high_water_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Where a phase's peak memory is read.
pub enum MemoryProbe {
    /// The process's resident set (CPU backends, and WGPU's host side).
    Host,
    /// The CUDA device's memory in use.
    #[cfg(feature = "cuda")]
    Cuda(cuda::DeviceMemory),
}

impl MemoryProbe {
    /// The probe for backend `kind` (device 0 for CUDA).
    pub fn for_backend(kind: BackendKind) -> anyhow::Result<Self> {
        match kind {
            #[cfg(feature = "cuda")]
            BackendKind::Cuda => Ok(Self::Cuda(cuda::DeviceMemory::start(0)?)),
            _ => Ok(Self::Host),
        }
    }

    /// What the probe reads, for reports.
    pub fn source(&self) -> &'static str {
        match self {
            Self::Host => "host resident set, high-water mark (VmHWM)",
            #[cfg(feature = "cuda")]
            Self::Cuda(_) => {
                "CUDA device memory in use (cuMemGetInfo total - free, sampled every 5 ms)"
            }
        }
    }

    /// Total memory of the device, bytes (the machine's RAM for the host).
    pub fn total_bytes(&self) -> Option<u64> {
        match self {
            Self::Host => host_memory_bytes(),
            #[cfg(feature = "cuda")]
            Self::Cuda(d) => Some(d.total),
        }
    }

    /// Name of the device, for reports.
    pub fn device_name(&self) -> String {
        match self {
            Self::Host => host_cpu_name(),
            #[cfg(feature = "cuda")]
            Self::Cuda(d) => d.name.clone(),
        }
    }

    /// Starts a phase: its peak is counted from now.
    pub fn start_phase(&self) {
        match self {
            Self::Host => reset_high_water_mark(),
            #[cfg(feature = "cuda")]
            Self::Cuda(d) => d.reset(),
        }
    }

    /// The peak since [`start_phase`](Self::start_phase), bytes.
    pub fn phase_peak(&self) -> u64 {
        match self {
            Self::Host => high_water_bytes().max(resident_bytes()),
            #[cfg(feature = "cuda")]
            Self::Cuda(d) => d.peak(),
        }
    }
}

/// This machine's memory in bytes (`MemTotal` of `/proc/meminfo`).
fn host_memory_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The CPU's model name and core count (`/proc/cpuinfo`).
fn host_cpu_name() -> String {
    let text = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let names: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("model name"))
        .filter_map(|l| l.split_once(':').map(|(_, v)| v.trim()))
        .collect();
    match names.first() {
        Some(n) => format!("cpu: {n} x{}", names.len()),
        None => "cpu".to_string(),
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    //! The device-memory sampler: cudarc's driver calls, the same cudarc burn's CUDA backend
    //! loads (`cuMemGetInfo` needs a current context, so the thread binds the device's primary
    //! context, which is the one burn computes in).

    use super::*;
    use cudarc::driver::result as cu;
    use std::sync::atomic::AtomicU64;

    /// Device memory in use, sampled on a thread.
    pub struct DeviceMemory {
        /// Total memory of the device, bytes.
        pub total: u64,
        /// The device's name.
        pub name: String,
        peak: Arc<AtomicU64>,
        stop: Arc<AtomicBool>,
        thread: Option<std::thread::JoinHandle<()>>,
        ordinal: i32,
    }

    /// Binds device `ordinal`'s primary context to this thread.
    fn bind(ordinal: i32) -> anyhow::Result<cudarc::driver::sys::CUdevice> {
        cu::init().map_err(|e| anyhow::anyhow!("cuInit: {e:?}"))?;
        let dev = cu::device::get(ordinal)
            .map_err(|e| anyhow::anyhow!("cuDeviceGet({ordinal}): {e:?}"))?;
        // SAFETY: `dev` comes from `device::get`; the primary context is retained for the life of
        // the process (never released), as burn's CUDA runtime does.
        unsafe {
            let ctx = cu::primary_ctx::retain(dev)
                .map_err(|e| anyhow::anyhow!("retaining the primary context: {e:?}"))?;
            cu::ctx::set_current(ctx)
                .map_err(|e| anyhow::anyhow!("binding the primary context: {e:?}"))?;
        }
        Ok(dev)
    }

    /// Memory in use on the device of the current context, and its total, bytes.
    fn in_use() -> Option<(u64, u64)> {
        let (free, total) = cu::mem_get_info().ok()?;
        Some(((total - free) as u64, total as u64))
    }

    impl DeviceMemory {
        /// Starts sampling device `ordinal`.
        pub fn start(ordinal: i32) -> anyhow::Result<Self> {
            let dev = bind(ordinal)?;
            let name =
                cu::device::get_name(dev).unwrap_or_else(|_| format!("CUDA device {ordinal}"));
            let (used, total) = in_use().ok_or_else(|| anyhow::anyhow!("cuMemGetInfo failed"))?;
            let peak = Arc::new(AtomicU64::new(used));
            let stop = Arc::new(AtomicBool::new(false));
            let thread = {
                let (peak, stop) = (peak.clone(), stop.clone());
                std::thread::spawn(move || {
                    if bind(ordinal).is_err() {
                        return;
                    }
                    while !stop.load(Ordering::Relaxed) {
                        if let Some((used, _)) = in_use() {
                            peak.fetch_max(used, Ordering::Relaxed);
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            };
            Ok(Self {
                total,
                name,
                peak,
                stop,
                thread: Some(thread),
                ordinal,
            })
        }

        /// Counts the peak from the memory in use now.
        pub fn reset(&self) {
            let now = self.read_now();
            self.peak.store(now, Ordering::Relaxed);
        }

        /// The largest sample since the last reset, with one more read now.
        pub fn peak(&self) -> u64 {
            let now = self.read_now();
            self.peak.fetch_max(now, Ordering::Relaxed).max(now)
        }

        /// The memory in use now, read on the calling thread (bound on first use).
        fn read_now(&self) -> u64 {
            in_use()
                .or_else(|| bind(self.ordinal).ok().and_then(|_| in_use()))
                .map_or(0, |(used, _)| used)
        }
    }

    impl Drop for DeviceMemory {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(t) = self.thread.take() {
                let _ = t.join();
            }
        }
    }
}
