//! Where figure 4's time goes. A tracing layer records when the spans of the operator running
//! in the benchmark's process open and close: kube-runtime's `reconciling object`,
//! kube-client's `HTTP` requests and the Bitbucket client's `bitbucket` calls. One trial's
//! spans, those of its two objects, make its trace: each step with its start after the apply
//! and its length, and the time no span of ours covers (watch hops and queues).

use std::{
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use tracing::{
    Subscriber,
    field::{Field, Visit},
    span,
};
use tracing_subscriber::{
    Layer,
    filter::filter_fn,
    layer::{Context, SubscriberExt as _},
    registry::LookupSpan,
    util::SubscriberInitExt as _,
};

/// The spans that say where a reconcile's time goes.
const RECORDED: [&str; 3] = ["reconciling object", "HTTP", "bitbucket"];

/// One span of the operator: what it was and when.
#[derive(Clone, Debug)]
struct Recorded {
    /// `reconcile BitbucketIntegration`, `PATCH bitbucketintegrations/status`,
    /// `bitbucket whoami`, …
    step: String,
    /// The object reconciled (`Kind…/name.namespace`), of the span or its reconcile.
    object: Option<String>,
    start: Instant,
    end: Option<Instant>,
}

static SPANS: Mutex<Vec<Recorded>> = Mutex::new(Vec::new());

/// Whether spans are recorded now (figure 4 only: the other figures run without).
static RECORDING: AtomicBool = AtomicBool::new(false);

/// Records [`RECORDED`] spans from now on (until [`stop`]), forgetting earlier ones. The
/// recorder is installed the first time, as the process's subscriber (the benchmark installs
/// no other). `BBO_BENCH_LOG` (a `RUST_LOG` filter, e.g.
/// `bitbucket_operator::status=debug`) also prints the in-process operator's log to stderr.
pub fn start() {
    let recorder = Recorder.with_filter(filter_fn(|meta| {
        meta.is_span() && RECORDING.load(Ordering::Relaxed) && RECORDED.contains(&meta.name())
    }));
    let log = std::env::var("BBO_BENCH_LOG").ok().map(|filter| {
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(tracing_subscriber::EnvFilter::new(filter))
    });
    let _ = tracing_subscriber::registry()
        .with(recorder)
        .with(log)
        .try_init();
    RECORDING.store(true, Ordering::Relaxed);
    clear();
}

/// Stops recording, forgetting what was recorded.
pub fn stop() {
    RECORDING.store(false, Ordering::Relaxed);
    clear();
}

/// Forgets what was recorded so far.
pub fn clear() {
    SPANS.lock().unwrap().clear();
}

struct Recorder;

/// The index of a span's record in [`SPANS`], kept in its extensions.
struct Index(usize);

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &span::Attributes<'_>, id: &span::Id, ctx: Context<'_, S>) {
        let mut fields = Fields::default();
        attrs.record(&mut fields);
        let Some(span) = ctx.span(id) else { return };
        let step = match attrs.metadata().name() {
            "reconciling object" => {
                let kind = fields.object.as_deref().and_then(|o| o.split('.').next());
                format!("reconcile {}", kind.unwrap_or("?"))
            }
            "HTTP" => format!(
                "{} {}",
                fields.method.as_deref().unwrap_or("?"),
                resource(fields.url.as_deref().unwrap_or_default())
            ),
            _ => format!("bitbucket {}", fields.operation.as_deref().unwrap_or("?")),
        };
        // A request's object is its reconcile's.
        let object = fields.object.or_else(|| {
            let parents = span.scope().skip(1);
            let mut spans = SPANS.lock().unwrap();
            parents
                .filter_map(|parent| Some(parent.extensions().get::<Index>()?.0))
                .find_map(|index| spans.get_mut(index)?.object.clone())
        });
        let mut spans = SPANS.lock().unwrap();
        spans.push(Recorded {
            step,
            object,
            start: Instant::now(),
            end: None,
        });
        span.extensions_mut().insert(Index(spans.len() - 1));
    }

    fn on_close(&self, id: span::Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(&id) else { return };
        let Some(Index(index)) = span.extensions().get::<Index>().map(|i| Index(i.0)) else {
            return;
        };
        if let Some(recorded) = SPANS.lock().unwrap().get_mut(index) {
            recorded.end = Some(Instant::now());
        }
    }
}

/// The fields [`Recorder`] reads.
#[derive(Default)]
struct Fields {
    object: Option<String>,
    method: Option<String>,
    url: Option<String>,
    operation: Option<String>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record_debug(field, &value);
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let value = format!("{value:?}").trim_matches('"').to_owned();
        match field.name() {
            "object.ref" => self.object = Some(value),
            "http.method" => self.method = Some(value),
            "http.url" => self.url = Some(value),
            "operation" => self.operation = Some(value),
            _ => {}
        }
    }
}

/// What a request's URL is about: the resource and subresource, without names
/// (`/apis/…/namespaces/ns/subscriptions/s1/status?…` → `subscriptions/status`).
fn resource(url: &str) -> String {
    let path = url.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let after = segments
        .iter()
        .position(|s| *s == "namespaces")
        .map_or(0, |i| i + 2);
    let rest = segments.get(after..).unwrap_or_default();
    match rest {
        [resource, _name, subresource, ..] => format!("{resource}/{subresource}"),
        [resource, ..] => (*resource).to_owned(),
        [] => path.to_owned(),
    }
}

/// One trial's steps, in order, from `started` until `seen` (the benchmark's watch saw both
/// objects Ready): the spans of `objects` (`/name.namespace` suffixes of their references).
pub struct Trace {
    /// Each step: its start after `started`, its length.
    steps: Vec<(String, Duration, Duration)>,
    /// From `started` until `seen`.
    total: Duration,
    /// Of `total`, the time no step covers.
    uncovered: Duration,
}

impl Trace {
    pub fn of(objects: &[String], started: Instant, seen: Instant) -> Self {
        let spans = SPANS.lock().unwrap();
        let mut steps: Vec<(String, Instant, Instant)> = (spans.iter())
            .filter(|s| s.start >= started && s.start <= seen)
            .filter(|s| {
                let object = s.object.as_deref().unwrap_or_default();
                objects.iter().any(|o| object.ends_with(o.as_str()))
            })
            .map(|s| (s.step.clone(), s.start, s.end.unwrap_or(seen).min(seen)))
            .collect();
        steps.sort_by_key(|(_, start, _)| *start);
        // The union of the steps (reconciles included, which hold the requests).
        let (mut covered, mut reach) = (Duration::ZERO, started);
        for (_, start, end) in &steps {
            let from = (*start).max(reach);
            if *end > from {
                covered += *end - from;
                reach = *end;
            }
        }
        let total = seen - started;
        Self {
            steps: (steps.into_iter())
                .map(|(step, start, end)| (step, start - started, end - start))
                .collect(),
            total,
            uncovered: total.saturating_sub(covered),
        }
    }

    pub fn total(&self) -> Duration {
        self.total
    }

    pub fn uncovered(&self) -> Duration {
        self.uncovered
    }

    /// The steps as the report says them: `+start step length` in milliseconds.
    pub fn describe(&self) -> String {
        let mut text = String::new();
        for (step, start, length) in &self.steps {
            let _ = write!(
                text,
                "+{:.1} {step} {:.1}; ",
                start.as_secs_f64() * 1e3,
                length.as_secs_f64() * 1e3
            );
        }
        let _ = write!(
            text,
            "Ready seen at +{:.1}, of which no span covers {:.1}",
            self.total.as_secs_f64() * 1e3,
            self.uncovered.as_secs_f64() * 1e3
        );
        text
    }
}
