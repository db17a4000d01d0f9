//! `iocore top`: a live view of a server's `/metrics` endpoint (`iocore
//! serve --metrics`), for people. Polls the endpoint (HTTP parsed by
//! `httparse`, the exposition text by `prometheus-parse`) and draws a
//! refreshing table with ratatui: sessions, rates per second, queued
//! bytes, closes by reason, per worker. `q`, Esc or Ctrl-C quits and
//! restores the terminal.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Cell, Paragraph, Row, Table};

/// What `iocore top` watches.
#[derive(Clone, Debug)]
pub struct TopOptions {
    /// The metrics endpoint's address.
    pub metrics: SocketAddr,
    /// How often to poll it.
    pub interval: Duration,
}

/// The table's columns and their widths: each as wide as its header or
/// its widest value (`999.9k`, `999.9MiB`), together (with the borders and a
/// space between columns) within 120 columns.
const COLUMNS: [(&str, u16); 13] = [
    ("worker", 6),
    ("open", 7),
    ("paused", 7),
    ("accepts/s", 9),
    ("closes/s", 8),
    ("in/s", 8),
    ("out/s", 8),
    ("msgs in/s", 9),
    ("msgs out/s", 10),
    ("queued", 8),
    ("recv buf", 8),
    ("wakeups/s", 9),
    ("ev/wake", 7),
];
const _: () = {
    let mut width = 2 + (COLUMNS.len() - 1);
    let mut i = 0;
    while i < COLUMNS.len() {
        width += COLUMNS[i].1 as usize;
        i += 1;
    }
    assert!(width <= 120, "the table must fit 120 columns");
};

/// How long one scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest answer read.
const MAX_ANSWER: u64 = 64 * 1024 * 1024;

/// `GET /metrics` from `addr`: the body of a 200 answer.
pub fn fetch(addr: SocketAddr) -> io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, SCRAPE_TIMEOUT)?;
    stream.set_read_timeout(Some(SCRAPE_TIMEOUT))?;
    stream.set_write_timeout(Some(SCRAPE_TIMEOUT))?;
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: iocore-top\r\nConnection: close\r\n\r\n"
    )?;
    let mut answer = Vec::new();
    let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
    if let Err(e) = stream.take(MAX_ANSWER).read_to_end(&mut answer) {
        // A server that is not an HTTP endpoint (an echo server, say) keeps
        // the connection open without an answer, or answers otherwise.
        let http = answer.starts_with(b"HTTP/");
        return Err(match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut if !http => bad(format!(
                "{addr} did not answer HTTP within {SCRAPE_TIMEOUT:?}: is it a metrics endpoint (`serve --metrics`)?"
            )),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                bad(format!("{addr} did not finish its answer within {SCRAPE_TIMEOUT:?}"))
            }
            _ => e,
        });
    }
    if !answer.is_empty() && !answer.starts_with(b"HTTP/") {
        return Err(bad(format!(
            "{addr} answered something that is not HTTP: is it a metrics endpoint (`serve --metrics`)?"
        )));
    }
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(&answer) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(bad("the answer ended before its headers did".into())),
        Err(e) => return Err(bad(format!("not an HTTP answer: {e}"))),
    };
    if response.code != Some(200) {
        return Err(bad(format!(
            "the endpoint answered {} {}",
            response.code.unwrap_or(0),
            response.reason.unwrap_or("")
        )));
    }
    let body = &answer[head..];
    let length = response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
        .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse::<usize>().ok());
    if let Some(n) = length {
        if n != body.len() {
            return Err(bad(format!(
                "the answer was cut short ({} of {n} bytes)",
                body.len()
            )));
        }
    }
    String::from_utf8(body.to_vec()).map_err(|_| bad("the metrics are not UTF-8".into()))
}

/// One scrape, parsed.
pub struct Sample {
    at: Instant,
    scrape: prometheus_parse::Scrape,
}

impl Sample {
    /// Parses exposition `text` scraped at `at`.
    pub fn parse(text: &str, at: Instant) -> io::Result<Sample> {
        let lines = text.lines().map(|l| Ok(l.to_string()));
        Ok(Sample {
            at,
            scrape: prometheus_parse::Scrape::parse(lines)?,
        })
    }

    fn value(v: &prometheus_parse::Value) -> f64 {
        match v {
            prometheus_parse::Value::Counter(x)
            | prometheus_parse::Value::Gauge(x)
            | prometheus_parse::Value::Untyped(x) => *x,
            _ => 0.0,
        }
    }

    /// `name` per worker (summed over its other labels).
    fn per_worker(&self, name: &str) -> BTreeMap<usize, f64> {
        let mut out = BTreeMap::new();
        for s in self.scrape.samples.iter().filter(|s| s.metric == name) {
            if let Some(w) = s.labels.get("worker").and_then(|w| w.parse().ok()) {
                *out.entry(w).or_insert(0.0) += Self::value(&s.value);
            }
        }
        out
    }

    /// `name` by the value of `label` (summed over the workers).
    fn by_label(&self, name: &str, label: &str) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for s in self.scrape.samples.iter().filter(|s| s.metric == name) {
            if let Some(l) = s.labels.get(label) {
                *out.entry(l.to_string()).or_insert(0.0) += Self::value(&s.value);
            }
        }
        out
    }

    /// `name` summed over every series.
    fn total(&self, name: &str) -> f64 {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .map(|s| Self::value(&s.value))
            .sum()
    }

    /// Whether the scrape has `name` at all.
    fn has(&self, name: &str) -> bool {
        self.scrape.samples.iter().any(|s| s.metric == name)
    }

    /// A histogram's cumulative counts by upper bound.
    fn histogram(&self, name: &str) -> Vec<(f64, f64)> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == name)
            .find_map(|s| match &s.value {
                prometheus_parse::Value::Histogram(h) => {
                    Some(h.iter().map(|b| (b.less_than, b.count)).collect())
                }
                _ => None,
            })
            .unwrap_or_default()
    }

    fn label_of(&self, name: &str, label: &str) -> Option<String> {
        let s = self.scrape.samples.iter().find(|s| s.metric == name)?;
        s.labels.get(label).map(str::to_string)
    }
}

/// One line of the table: a worker, or all of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WorkerRow {
    /// The worker's index, or "all".
    pub name: String,
    /// Sessions open.
    pub open: f64,
    /// Sessions whose input is paused.
    pub paused: f64,
    /// Bytes queued for sending.
    pub queued: f64,
    /// Bytes held in receive buffers.
    pub recv_buffer: f64,
    /// Per second, since the previous scrape (`None` on the first).
    pub rates: Option<Rates>,
}

/// Rates per second of one worker's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Rates {
    /// Sessions accepted.
    pub accepted: f64,
    /// Sessions closed.
    pub closed: f64,
    /// Bytes received.
    pub bytes_in: f64,
    /// Bytes sent.
    pub bytes_out: f64,
    /// Messages received.
    pub msgs_in: f64,
    /// Messages sent.
    pub msgs_out: f64,
    /// Event-loop wake-ups.
    pub wakeups: f64,
    /// Events per wake-up over the interval.
    pub events_per_wakeup: f64,
}

/// What the screen shows, computed from two scrapes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    /// The engine serving.
    pub engine: String,
    /// The server's iocore version.
    pub version: String,
    /// One row per worker, then the total.
    pub rows: Vec<WorkerRow>,
    /// Closes by reason: (reason, total, per second), non-zero only.
    pub closes: Vec<(String, f64, Option<f64>)>,
    /// Failed accepts and resets by kind, non-zero only.
    pub refusals: Vec<(String, f64, Option<f64>)>,
    /// Workers out of descriptors or memory for accepts now.
    pub shortage: f64,
    /// Topics with a subscriber, and subscriptions.
    pub topics: (f64, f64),
    /// The rooms, if the server runs any.
    pub rooms: Option<RoomsView>,
}

/// The rooms' line.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RoomsView {
    /// Rooms alive.
    pub rooms: f64,
    /// Jobs waiting in their inboxes.
    pub queued: f64,
    /// Posts refused for a full inbox, in all.
    pub refused: f64,
    /// Per second since the previous scrape: ticks run, ticks missed.
    pub ticks: Option<(f64, f64)>,
    /// The upper bound of the bucket the 99th percentile of tick lateness
    /// falls in over the interval, seconds (`None`: no tick in it, or on
    /// the first scrape; infinite: beyond the last bound).
    pub lateness_p99: Option<f64>,
}

/// The rooms' line from two scrapes, if the server has rooms.
fn rooms_view(prev: Option<&Sample>, cur: &Sample, dt: Option<f64>) -> Option<RoomsView> {
    if !cur.has("iocore_rooms") {
        return None;
    }
    let delta = |name: &str| {
        let before = prev.map_or(0.0, |p| p.total(name));
        (cur.total(name) - before).max(0.0)
    };
    let ticks = dt.map(|dt| {
        (
            delta("iocore_room_ticks_total") / dt,
            delta("iocore_room_ticks_missed_total") / dt,
        )
    });
    // The interval's lateness, from the change of each cumulative bucket.
    let now = cur.histogram("iocore_room_tick_lateness_seconds");
    let before = prev.map(|p| p.histogram("iocore_room_tick_lateness_seconds"));
    let lateness_p99 = before.and_then(|before| {
        let counts: Vec<(f64, f64)> = now
            .iter()
            .map(|&(le, n)| {
                let was = before.iter().find(|b| b.0 == le).map_or(0.0, |b| b.1);
                (le, (n - was).max(0.0))
            })
            .collect();
        let total = counts.iter().map(|c| c.1).fold(0.0, f64::max);
        if total == 0.0 {
            return None;
        }
        counts.iter().find(|c| c.1 >= 0.99 * total).map(|c| c.0)
    });
    Some(RoomsView {
        rooms: cur.total("iocore_rooms"),
        queued: cur.total("iocore_room_jobs_queued"),
        refused: cur.total("iocore_room_posts_refused_total"),
        ticks,
        lateness_p99,
    })
}

impl RoomsView {
    /// The line `iocore top` shows.
    pub fn line(&self) -> String {
        let ticks = match self.ticks {
            Some((run, missed)) => format!("{}/s ({} missed/s)", count(run), count(missed)),
            None => "-".into(),
        };
        let late = match self.lateness_p99 {
            Some(s) if s.is_finite() => format!("≤ {}", seconds(s)),
            Some(_) => "> 1s".into(),
            None => "-".into(),
        };
        format!(
            "rooms {} · ticks {ticks} · tick lateness p99 {late} · jobs queued {} · posts refused {}",
            count(self.rooms),
            count(self.queued),
            count(self.refused)
        )
    }
}

/// 0.0005 → "500us", 0.002 → "2ms".
fn seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0}us", s * 1e6)
    } else if s < 1.0 {
        format!("{}ms", (s * 1e3 * 10.0).round() / 10.0)
    } else {
        format!("{s}s")
    }
}

/// The view of `cur`, with rates since `prev`.
pub fn view(prev: Option<&Sample>, cur: &Sample) -> View {
    let dt = prev.map(|p| cur.at.saturating_duration_since(p.at).as_secs_f64());
    let dt = dt.filter(|d| *d > 0.0);
    let counters = |name: &str| {
        let now = cur.per_worker(name);
        let before = prev.map(|p| p.per_worker(name)).unwrap_or_default();
        (now, before)
    };
    let open = cur.per_worker("iocore_sessions_open");
    let paused = cur.per_worker("iocore_sessions_paused");
    let queued = cur.per_worker("iocore_send_queue_bytes");
    let recv = cur.per_worker("iocore_recv_buffer_bytes");
    let names = [
        "iocore_sessions_accepted_total",
        "iocore_sessions_closed_total",
        "iocore_received_bytes_total",
        "iocore_sent_bytes_total",
        "iocore_received_messages_total",
        "iocore_sent_messages_total",
        "iocore_loop_wakeups_total",
        "iocore_loop_events_total",
    ];
    let series: Vec<_> = names.iter().map(|n| counters(n)).collect();
    let workers: Vec<usize> = open.keys().copied().collect();
    let delta = |i: usize, w: Option<usize>| -> f64 {
        let (now, before) = &series[i];
        let sum = |m: &BTreeMap<usize, f64>| match w {
            Some(w) => m.get(&w).copied().unwrap_or(0.0),
            None => m.values().sum(),
        };
        // A restarted server's counters start again: no negative rates.
        (sum(now) - sum(before)).max(0.0)
    };
    let rates = |w: Option<usize>| {
        dt.map(|dt| {
            let wakeups = delta(6, w);
            Rates {
                accepted: delta(0, w) / dt,
                closed: delta(1, w) / dt,
                bytes_in: delta(2, w) / dt,
                bytes_out: delta(3, w) / dt,
                msgs_in: delta(4, w) / dt,
                msgs_out: delta(5, w) / dt,
                wakeups: wakeups / dt,
                events_per_wakeup: if wakeups > 0.0 { delta(7, w) / wakeups } else { 0.0 },
            }
        })
    };
    let get = |m: &BTreeMap<usize, f64>, w: usize| m.get(&w).copied().unwrap_or(0.0);
    let mut rows: Vec<WorkerRow> = workers
        .iter()
        .map(|&w| WorkerRow {
            name: w.to_string(),
            open: get(&open, w),
            paused: get(&paused, w),
            queued: get(&queued, w),
            recv_buffer: get(&recv, w),
            rates: rates(Some(w)),
        })
        .collect();
    rows.push(WorkerRow {
        name: "all".into(),
        open: open.values().sum(),
        paused: paused.values().sum(),
        queued: queued.values().sum(),
        recv_buffer: recv.values().sum(),
        rates: rates(None),
    });
    let labelled = |name: &str, label: &str, prefix: &str| {
        let now = cur.by_label(name, label);
        let before = prev.map(|p| p.by_label(name, label)).unwrap_or_default();
        now.into_iter()
            .filter(|(_, v)| *v > 0.0)
            .map(|(k, v)| {
                let rate = dt.map(|dt| (v - before.get(&k).copied().unwrap_or(0.0)).max(0.0) / dt);
                (format!("{prefix}{k}"), v, rate)
            })
            .collect::<Vec<_>>()
    };
    let mut refusals = labelled("iocore_accept_errors_total", "kind", "accept error: ");
    refusals.extend(labelled("iocore_sessions_rejected_total", "limit", "reset at "));
    View {
        engine: cur
            .label_of("iocore_build_info", "engine")
            .unwrap_or_else(|| "?".into()),
        version: cur
            .label_of("iocore_build_info", "version")
            .unwrap_or_else(|| "?".into()),
        rows,
        closes: labelled("iocore_sessions_closed_total", "reason", ""),
        refusals,
        shortage: cur.total("iocore_accept_shortage"),
        topics: (
            cur.total("iocore_topics"),
            cur.total("iocore_topic_subscriptions"),
        ),
        rooms: rooms_view(prev, cur, dt),
    }
}

/// 1234 → "1.2k", for counts and rates.
fn count(v: f64) -> String {
    match v {
        v if v >= 1e9 => format!("{:.1}G", v / 1e9),
        v if v >= 1e6 => format!("{:.1}M", v / 1e6),
        v if v >= 1e4 => format!("{:.1}k", v / 1e3),
        v if v.fract() == 0.0 => format!("{v:.0}"),
        v => format!("{v:.1}"),
    }
}

/// Bytes with a binary unit.
fn bytes(v: f64) -> String {
    match v {
        v if v >= (1u64 << 30) as f64 => format!("{:.1}GiB", v / (1u64 << 30) as f64),
        v if v >= (1 << 20) as f64 => format!("{:.1}MiB", v / (1 << 20) as f64),
        v if v >= (1 << 10) as f64 => format!("{:.1}KiB", v / (1 << 10) as f64),
        v => format!("{v:.0}B"),
    }
}

fn rate(r: Option<&Rates>, f: impl Fn(&Rates) -> String) -> String {
    r.map_or_else(|| "-".into(), f)
}

/// The poller's latest news.
enum Poll {
    Sample(String, Instant),
    Failed(String),
}

/// Draws one frame.
fn draw(frame: &mut ratatui::Frame<'_>, opts: &TopOptions, view: Option<&View>, status: &str) {
    // The table as tall as its rows (borders and header: 3 lines); the
    // lists below get the rest.
    let table_height = view.map_or(1, |v| v.rows.len()) as u16 + 3;
    let rooms = view.and_then(|v| v.rooms.as_ref());
    let [head, table, lists, foot] = Layout::vertical([
        Constraint::Length(1 + rooms.is_some() as u16),
        Constraint::Length(table_height),
        Constraint::Min(4),
        Constraint::Length(1),
    ])
    .areas(frame.area());
    let title = match view {
        Some(v) => format!(
            "iocore top — {} · engine {} · iocore {} · topics {} ({} subscriptions){}",
            opts.metrics,
            v.engine,
            v.version,
            count(v.topics.0),
            count(v.topics.1),
            if v.shortage > 0.0 {
                " · ACCEPT SHORTAGE"
            } else {
                ""
            }
        ),
        None => format!("iocore top — {}", opts.metrics),
    };
    let mut head_lines = vec![Line::from(title).style(Style::new().add_modifier(Modifier::BOLD))];
    if let Some(r) = rooms {
        head_lines.push(Line::from(r.line()));
    }
    frame.render_widget(Paragraph::new(head_lines), head);

    let header = Row::new(COLUMNS.map(|(name, _)| name)).style(Style::new().add_modifier(Modifier::REVERSED));
    let rows = view
        .map(|v| v.rows.as_slice())
        .unwrap_or_default()
        .iter()
        .map(|r| {
            let rt = r.rates.as_ref();
            let row = Row::new([
                Cell::from(r.name.clone()),
                Cell::from(count(r.open)),
                Cell::from(count(r.paused)),
                Cell::from(rate(rt, |x| count(x.accepted))),
                Cell::from(rate(rt, |x| count(x.closed))),
                Cell::from(rate(rt, |x| bytes(x.bytes_in))),
                Cell::from(rate(rt, |x| bytes(x.bytes_out))),
                Cell::from(rate(rt, |x| count(x.msgs_in))),
                Cell::from(rate(rt, |x| count(x.msgs_out))),
                Cell::from(bytes(r.queued)),
                Cell::from(bytes(r.recv_buffer)),
                Cell::from(rate(rt, |x| count(x.wakeups))),
                Cell::from(rate(rt, |x| format!("{:.1}", x.events_per_wakeup))),
            ]);
            match r.name.as_str() {
                "all" => row.style(Style::new().add_modifier(Modifier::BOLD)),
                _ => row,
            }
        });
    let widths = COLUMNS.map(|(_, width)| Constraint::Length(width));
    frame.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" sessions per worker ")),
        table,
    );

    let [left, right] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(lists);
    let listing = |items: &[(String, f64, Option<f64>)]| -> Vec<Line<'static>> {
        if items.is_empty() {
            return vec![Line::from("none")];
        }
        items
            .iter()
            .map(|(k, total, per_s)| {
                let per_s = per_s.map_or_else(String::new, |r| format!("  ({}/s)", count(r)));
                Line::from(format!("{k:<28} {:>8}{per_s}", count(*total)))
            })
            .collect()
    };
    let (closes, refusals) = match view {
        Some(v) => (listing(&v.closes), listing(&v.refusals)),
        None => (Vec::new(), Vec::new()),
    };
    frame.render_widget(
        Paragraph::new(closes).block(Block::bordered().title(" closes by reason ")),
        left,
    );
    frame.render_widget(
        Paragraph::new(refusals).block(Block::bordered().title(" refused connections ")),
        right,
    );
    let style = match status.starts_with("error") {
        true => Style::new().fg(Color::Red),
        false => Style::new().fg(Color::DarkGray),
    };
    frame.render_widget(
        Paragraph::new(Line::from(vec![
            Span::styled("q", Style::new().add_modifier(Modifier::BOLD)),
            Span::raw(" quits · "),
            Span::styled(status.to_string(), style),
        ])),
        foot,
    );
}

/// Runs the live view until `q`, Esc, Ctrl-C or `stop`.
pub fn run(opts: &TopOptions, stop: Arc<AtomicBool>) -> io::Result<()> {
    if !io::IsTerminal::is_terminal(&io::stdout()) {
        return Err(io::Error::other(
            "iocore top draws on a terminal; stdout is not one (for the raw numbers: curl http://ADDR/metrics)",
        ));
    }
    if opts.interval.is_zero() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--interval must be above 0",
        ));
    }
    // The poller runs beside the screen so a slow endpoint never freezes
    // the keys; it ends when the screen hangs up.
    let (tx, rx) = mpsc::channel();
    let (addr, interval) = (opts.metrics, opts.interval);
    std::thread::Builder::new()
        .name("iocore-top-poll".into())
        .spawn(move || loop {
            let news = match fetch(addr) {
                Ok(text) => Poll::Sample(text, Instant::now()),
                Err(e) => Poll::Failed(e.to_string()),
            };
            if tx.send(news).is_err() {
                return;
            }
            std::thread::sleep(interval);
        })?;
    let mut terminal = ratatui::try_init()?;
    let shown = show(&mut terminal, opts, &rx, &stop);
    ratatui::restore();
    shown
}

fn show(
    terminal: &mut ratatui::DefaultTerminal,
    opts: &TopOptions,
    rx: &mpsc::Receiver<Poll>,
    stop: &AtomicBool,
) -> io::Result<()> {
    let mut prev: Option<Sample> = None;
    let mut current: Option<View> = None;
    let mut status = format!(
        "polling http://{}/metrics every {:?}",
        opts.metrics, opts.interval
    );
    loop {
        while let Ok(news) = rx.try_recv() {
            match news {
                Poll::Sample(text, at) => match Sample::parse(&text, at) {
                    Ok(sample) => {
                        current = Some(view(prev.as_ref(), &sample));
                        prev = Some(sample);
                        status = format!(
                            "polling http://{}/metrics every {:?}",
                            opts.metrics, opts.interval
                        );
                    }
                    Err(e) => status = format!("error: unreadable metrics: {e}"),
                },
                Poll::Failed(e) => status = format!("error: {e} (retrying)"),
            }
        }
        terminal.draw(|f| draw(f, opts, current.as_ref(), &status))?;
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
        if event::poll(Duration::from_millis(100))? {
            if let Event::Key(k) = event::read()? {
                let ctrl_c = k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
                if k.kind == KeyEventKind::Press
                    && (matches!(k.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c)
                {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRST: &str = "\
# TYPE iocore_build_info gauge
iocore_build_info{version=\"0.1.0\",engine=\"epoll\"} 1
# TYPE iocore_sessions_open gauge
iocore_sessions_open{worker=\"0\"} 3
iocore_sessions_open{worker=\"1\"} 2
# TYPE iocore_received_bytes_total counter
iocore_received_bytes_total{worker=\"0\"} 1000
iocore_received_bytes_total{worker=\"1\"} 0
# TYPE iocore_sessions_closed_total counter
iocore_sessions_closed_total{worker=\"0\",reason=\"peer_closed\"} 4
iocore_sessions_closed_total{worker=\"1\",reason=\"peer_closed\"} 1
iocore_sessions_closed_total{worker=\"1\",reason=\"protocol_violation\"} 0
";

    #[test]
    fn rows_per_worker_and_total_with_rates_from_two_scrapes() {
        let t0 = Instant::now();
        let a = Sample::parse(FIRST, t0).unwrap();
        let second = FIRST
            .replace(
                "iocore_received_bytes_total{worker=\"0\"} 1000",
                "iocore_received_bytes_total{worker=\"0\"} 3000",
            )
            .replace(
                "reason=\"protocol_violation\"} 0",
                "reason=\"protocol_violation\"} 2",
            );
        let b = Sample::parse(&second, t0 + Duration::from_secs(2)).unwrap();

        let first = view(None, &a);
        assert_eq!(first.engine, "epoll");
        assert_eq!(first.rows.len(), 3, "two workers and the total");
        assert_eq!(first.rows[2].open, 5.0);
        assert!(first.rows[0].rates.is_none(), "no rates from one scrape");
        assert_eq!(first.closes, vec![("peer_closed".to_string(), 5.0, None)]);

        let v = view(Some(&a), &b);
        assert_eq!(v.rows[0].rates.as_ref().unwrap().bytes_in, 1000.0);
        assert_eq!(v.rows[1].rates.as_ref().unwrap().bytes_in, 0.0);
        assert_eq!(v.rows[2].rates.as_ref().unwrap().bytes_in, 1000.0);
        assert_eq!(
            v.closes,
            vec![
                ("peer_closed".to_string(), 5.0, Some(0.0)),
                ("protocol_violation".to_string(), 2.0, Some(1.0)),
            ]
        );
    }

    #[test]
    fn the_rooms_line_from_two_scrapes() {
        let text = |ticks: u64, le_1ms: u64, le_2ms: u64| {
            format!(
                "# TYPE iocore_rooms gauge\niocore_rooms 3\n\
                 # TYPE iocore_room_jobs_queued gauge\niocore_room_jobs_queued 7\n\
                 # TYPE iocore_room_posts_refused_total counter\niocore_room_posts_refused_total 2\n\
                 # TYPE iocore_room_ticks_total counter\niocore_room_ticks_total {ticks}\n\
                 # TYPE iocore_room_ticks_missed_total counter\niocore_room_ticks_missed_total 0\n\
                 # TYPE iocore_room_tick_lateness_seconds histogram\n\
                 iocore_room_tick_lateness_seconds_bucket{{le=\"0.001\"}} {le_1ms}\n\
                 iocore_room_tick_lateness_seconds_bucket{{le=\"0.002\"}} {le_2ms}\n\
                 iocore_room_tick_lateness_seconds_bucket{{le=\"+Inf\"}} {le_2ms}\n\
                 iocore_room_tick_lateness_seconds_sum 0.01\n\
                 iocore_room_tick_lateness_seconds_count {le_2ms}\n"
            )
        };
        let t0 = Instant::now();
        let a = Sample::parse(&text(100, 100, 100), t0).unwrap();
        // 200 ticks in 2 s, of which 10 between 1 and 2 ms late: the p99
        // is in the 2 ms bucket.
        let b = Sample::parse(&text(300, 290, 300), t0 + Duration::from_secs(2)).unwrap();
        assert!(
            view(None, &Sample::parse(FIRST, t0).unwrap()).rooms.is_none(),
            "no rooms, no line"
        );
        let first = view(None, &a).rooms.unwrap();
        assert_eq!(
            (first.rooms, first.queued, first.refused, first.ticks),
            (3.0, 7.0, 2.0, None)
        );
        let r = view(Some(&a), &b).rooms.unwrap();
        assert_eq!(r.ticks, Some((100.0, 0.0)));
        assert_eq!(r.lateness_p99, Some(0.002));
        assert_eq!(
            r.line(),
            "rooms 3 · ticks 100/s (0 missed/s) · tick lateness p99 ≤ 2ms · jobs queued 7 · posts refused 2"
        );
    }

    #[test]
    fn units() {
        assert_eq!(bytes(512.0), "512B");
        assert_eq!(bytes(1536.0), "1.5KiB");
        assert_eq!(count(12.0), "12");
        assert_eq!(count(12_345.0), "12.3k");
    }
}
