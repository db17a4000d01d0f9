//! A Win32 event object: wakes a worker's loop from another thread (the
//! Windows counterpart of eventfd).

use std::io;
use std::os::windows::io::{AsRawHandle, FromRawHandle, OwnedHandle, RawHandle};

use windows_sys::Win32::System::Threading::{CreateEventW, ResetEvent, SetEvent};

/// A manual-reset event, closed on drop. An IOCP loop, which cannot wait
/// on events, attaches its port so wake-ups also reach it.
pub(crate) struct Event {
    handle: OwnedHandle,
    port: std::sync::Mutex<Option<super::iocp::PortWaker>>,
}

impl Event {
    /// A new event in the non-signaled state.
    pub(crate) fn new() -> io::Result<Event> {
        // SAFETY: null security attributes and name are allowed; the
        // flags ask for a manual-reset event, initially non-signaled.
        let h = unsafe { CreateEventW(std::ptr::null(), 1, 0, std::ptr::null()) };
        if h.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: CreateEventW just returned this handle; we own it.
        let handle = unsafe { OwnedHandle::from_raw_handle(h as RawHandle) };
        Ok(Event {
            handle,
            port: Default::default(),
        })
    }

    /// Also wakes `port`'s loop from now on (`None`: stop).
    pub(crate) fn attach_port(&self, port: Option<super::iocp::PortWaker>) {
        *self.port.lock().unwrap_or_else(|p| p.into_inner()) = port;
    }

    /// Signals the event (and the attached port).
    pub(crate) fn wake(&self) -> io::Result<()> {
        if let Some(port) = &*self.port.lock().unwrap_or_else(|p| p.into_inner()) {
            port.wake()?;
        }
        // SAFETY: the handle is a live event owned by self.
        if unsafe { SetEvent(self.handle.as_raw_handle() as _) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Whether the event is signaled now.
    pub(crate) fn handle_is_set(&self) -> bool {
        // SAFETY: the handle is a live event; a zero timeout only tests it.
        unsafe {
            windows_sys::Win32::System::Threading::WaitForSingleObject(self.handle.as_raw_handle() as _, 0)
                == windows_sys::Win32::Foundation::WAIT_OBJECT_0
        }
    }

    /// Returns the event to non-signaled.
    pub(crate) fn drain(&self) -> io::Result<()> {
        // SAFETY: the handle is a live event owned by self.
        if unsafe { ResetEvent(self.handle.as_raw_handle() as _) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl AsRawHandle for Event {
    fn as_raw_handle(&self) -> RawHandle {
        self.handle.as_raw_handle()
    }
}
