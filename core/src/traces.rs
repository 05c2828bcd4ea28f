//! OpenTelemetry request traces through the `opentelemetry` SDK, exported as
//! OTLP http/protobuf by `opentelemetry-otlp`.
//!
//! **Where spans come from.** [`RequestSpan::start`] is called by
//! `Core::handle` for every API request. It takes the trace id of the
//! caller's W3C `traceparent` header (put into `Request::headers` by the
//! HTTP layer) when the header is valid, or draws a new one, and asks the
//! configured sampler up front, before any span exists: only a sampled
//! request gets an SDK span (continuing the caller's context, with that
//! sampling result handed to the SDK so it is not decided twice). The trace
//! id of a sampled request, and the caller's trace id whether sampled or
//! not, is stored on the request (`Request::trace_id`), and `audit.rs`
//! writes it into the request's audit events ([`trace_id_of`]), so an audit
//! line leads to its trace or to the caller's. An unsampled request without
//! a caller's context carries none: its new id would name a trace that
//! exists nowhere, and 99 of 100 requests at 1% sampling would write it
//! into both audit events for nothing.
//! While a sampled request runs, its context is current (attached to the
//! request's future), and each stage opens a child of whatever span is
//! current with [`in_span`]: `token.lookup`, `acl`, `audit.write` (with the
//! audit log's own `audit.sync_wait` inside, in `custos-audit`), `engine`,
//! `barrier.*`, `raft.write`. Raft's log append and state-machine apply run
//! in openraft's tasks, for a whole group of writes at once: the storage
//! records their times per log index ([`raft_io`]) and the group writer
//! turns them into `raft.append` / `raft.apply` children of every traced
//! write in the group ([`raft_io_spans`]). Spans carry the mount,
//! operation, status, request id and mount type — never a path, a token, or
//! request or response data.
//!
//! **Where they go.** [`install`] builds the pipeline from the
//! `telemetry { otlp_endpoint = "..." }` HCL setting or the standard
//! environment: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as is),
//! `OTEL_EXPORTER_OTLP_ENDPOINT` (`/v1/traces` appended),
//! `OTEL_EXPORTER_OTLP_PROTOCOL` / `..._TRACES_PROTOCOL` (only
//! `http/protobuf`, the default), `OTEL_EXPORTER_OTLP_HEADERS`,
//! `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_SERVICE_NAME` (default `custos`),
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER(_ARG)` (default
//! `parentbased_always_on`; read by the SDK's own configuration, and the
//! sampler it builds is the one asked up front), `OTEL_BSP_*`;
//! `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none` turn it off. The
//! HCL setting wins over the endpoint variables, as programmatic
//! configuration does in the SDK. Finished spans go to the SDK's batch
//! processor: a bounded queue ([`QUEUE_SIZE_DEFAULT`],
//! `OTEL_BSP_MAX_QUEUE_SIZE`) drained by its own thread, which POSTs batches
//! with reqwest's blocking client, so a slow collector never slows a
//! request; a span that finds the queue full is dropped and counted
//! (`custos_otlp_spans_dropped_total{reason="queue_full"}`), as is a batch
//! the collector refused (`export_failed`). [`shutdown`] exports what is
//! queued.
//!
//! **What it costs.** With no endpoint configured nothing is installed:
//! every instrumentation point costs one relaxed atomic load, no trace id is
//! invented (a caller's valid `traceparent` still reaches the audit events).
//! With an exporter, an unsampled request costs a trace id from the SDK's
//! thread-local generator and one sampler call — no SDK span, no `Context`,
//! no allocation, no trace id in its audit events — and its stages find no
//! current span, so [`in_span`] runs them as they are. Span names are static per operation.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{
    SamplingDecision, SamplingResult, Span as _, SpanContext, SpanId, SpanKind, Status,
    TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Config, IdGenerator as _, RandomIdGenerator, SdkTracer,
    SdkTracerProvider, ShouldSample, SpanData, SpanExporter, SpanProcessor,
};

use crate::logical::{Operation, Request};
use crate::metrics as m;

/// The request header carrying the W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Finished spans waiting for export when `OTEL_BSP_MAX_QUEUE_SIZE` is unset
/// (the SDK's default); more are dropped (`reason="queue_full"`).
pub const QUEUE_SIZE_DEFAULT: usize = 2048;
/// The instrumentation scope and default `service.name`.
pub const SERVICE: &str = "custos";
/// How long [`shutdown`] waits for the last export.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// Why tracing could not be set up; the message names the setting.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{var}={value:?} is not supported: Custos exports OTLP over http/protobuf only")]
    Protocol { var: &'static str, value: String },
    #[error("OTEL_TRACES_EXPORTER={0:?} is not supported: use otlp or none")]
    Exporter(String),
    #[error("{var}={value:?}: {reason}")]
    Invalid {
        var: &'static str,
        value: String,
        reason: String,
    },
    #[error("OTLP trace exporter for {endpoint}: {reason}")]
    Build { endpoint: String, reason: String },
}

/// A W3C trace context (`traceparent`): 16-byte trace id, 8-byte span id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub sampled: bool,
}

impl TraceContext {
    /// Parse a `traceparent` header value (`00-<32 hex>-<16 hex>-<2 hex>`).
    /// All-zero ids, version `ff` and malformed values are rejected.
    pub fn parse(header: &str) -> Option<TraceContext> {
        let parts: Vec<&str> = header.trim().split('-').collect();
        if parts.len() < 4 {
            return None;
        }
        let (version, tid, sid, flags) = (parts[0], parts[1], parts[2], parts[3]);
        // Version 00 has exactly four fields; later versions may add more.
        if version.len() != 2 || version.eq_ignore_ascii_case("ff") {
            return None;
        }
        if version == "00" && parts.len() != 4 {
            return None;
        }
        let lower = |s: &str| {
            s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower(version) && lower(tid) && lower(sid) && lower(flags)) || flags.len() != 2 {
            return None;
        }
        let mut trace_id = [0u8; 16];
        let mut span_id = [0u8; 8];
        hex::decode_to_slice(tid, &mut trace_id).ok()?;
        hex::decode_to_slice(sid, &mut span_id).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
        })
    }

    /// The `traceparent` header value of this context.
    pub fn header(&self) -> String {
        format!(
            "00-{}-{}-{}",
            hex::encode(self.trace_id),
            hex::encode(self.span_id),
            if self.sampled { "01" } else { "00" }
        )
    }

    pub fn trace_id_hex(&self) -> String {
        hex::encode(self.trace_id)
    }

    /// This context as the remote parent of a new span.
    fn remote_parent(&self) -> Context {
        let flags = if self.sampled {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        Context::new().with_remote_span_context(SpanContext::new(
            TraceId::from_bytes(self.trace_id),
            SpanId::from_bytes(self.span_id),
            flags,
            true,
            TraceState::default(),
        ))
    }
}

/// The trace id (32 lowercase hex digits) of a request whose caller sent a
/// valid trace context, or that `Core::handle` sampled.
pub fn trace_id_of(req: &Request) -> Option<String> {
    let id = req.trace_id?;
    // `hex::encode` collects char by char; this writes the 32 bytes at once.
    let mut buf = [0u8; 32];
    hex::encode_to_slice(id, &mut buf).ok()?;
    std::str::from_utf8(&buf).ok().map(str::to_owned)
}

/// The installed pipeline.
struct Pipeline {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    /// The sampler `OTEL_TRACES_SAMPLER(_ARG)` configure, built by the SDK's
    /// own configuration as the provider's is; asked by
    /// [`RequestSpan::start`] before any span exists.
    sampler: Box<dyn ShouldSample>,
}

/// Set together with [`PIPELINE`]; read on every instrumentation point.
static ENABLED: AtomicBool = AtomicBool::new(false);
static PIPELINE: RwLock<Option<Pipeline>> = RwLock::new(None);

/// Whether a trace exporter is installed.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn tracer() -> Option<SdkTracer> {
    PIPELINE
        .read()
        .ok()
        .and_then(|g| g.as_ref().map(|p| p.tracer.clone()))
}

/// The export settings resolved from the HCL setting and the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportPlan {
    /// The full URL spans are POSTed to (`.../v1/traces`).
    pub endpoint: String,
    /// Finished spans that may wait for export.
    pub queue_size: usize,
}

/// `http://collector:4318` → `http://collector:4318/v1/traces`; a URL
/// already ending in `/v1/traces` is kept.
fn traces_url(base: &str) -> String {
    let base = base.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

/// Resolve where (and whether) to export, from `otlp_endpoint` (HCL) and
/// the environment `env`. `Ok(None)`: tracing stays off.
pub fn plan(
    otlp_endpoint: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<ExportPlan>, TraceError> {
    let var = |k: &str| {
        env(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match var("OTEL_TRACES_EXPORTER") {
        Some(e) if e.eq_ignore_ascii_case("none") => return Ok(None),
        Some(e) if !e.eq_ignore_ascii_case("otlp") => return Err(TraceError::Exporter(e)),
        _ => {}
    }
    let endpoint = match otlp_endpoint.filter(|e| !e.is_empty()) {
        Some(e) => traces_url(e),
        None => match (
            var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"),
            var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        ) {
            (Some(e), _) => e,
            (None, Some(e)) => traces_url(&e),
            (None, None) => return Ok(None),
        },
    };
    for v in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = var(v) {
            if p != "http/protobuf" {
                return Err(TraceError::Protocol { var: v, value: p });
            }
            break;
        }
    }
    let queue_size = match var("OTEL_BSP_MAX_QUEUE_SIZE") {
        None => QUEUE_SIZE_DEFAULT,
        Some(q) => match q.parse::<usize>() {
            Ok(n) if n > 0 => n,
            _ => {
                return Err(TraceError::Invalid {
                    var: "OTEL_BSP_MAX_QUEUE_SIZE",
                    value: q,
                    reason: "must be a positive integer".into(),
                });
            }
        },
    };
    Ok(Some(ExportPlan {
        endpoint,
        queue_size,
    }))
}

/// The resource: `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_SERVICE_NAME` as the
/// SDK reads them, with `service.name` defaulting to `custos`.
fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.split('=').next().map(str::trim) == Some("service.name"))
        });
    let builder = Resource::builder();
    if named {
        builder.build()
    } else {
        builder.with_service_name(SERVICE).build()
    }
}

/// Set up the pipeline from `otlp_endpoint` (HCL) and the environment (see
/// the module docs), replacing any earlier one. `Ok(false)`: tracing is off.
/// Call from within a Tokio runtime or not; export runs on its own thread.
pub fn install(otlp_endpoint: Option<&str>) -> Result<bool, TraceError> {
    let Some(plan) = plan(otlp_endpoint, |k| std::env::var(k).ok())? else {
        return Ok(false);
    };
    let build_err = |reason: String| TraceError::Build {
        endpoint: plan.endpoint.clone(),
        reason,
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_endpoint(plan.endpoint.clone())
        .build()
        .map_err(|e| build_err(e.to_string()))?;
    let queued = Arc::new(AtomicUsize::new(0));
    let batch = BatchSpanProcessor::builder(CountingExporter {
        inner: exporter,
        queued: queued.clone(),
    })
    .with_batch_config(
        BatchConfigBuilder::default()
            .with_max_queue_size(plan.queue_size)
            .build(),
    )
    .build();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BoundedProcessor {
            inner: batch,
            queued,
            capacity: plan.queue_size,
        })
        .with_resource(resource())
        .build();
    let tracer = provider.tracer(SERVICE);
    // The same reading of the environment the provider builder made.
    let sampler = Config::default().sampler;
    // `custos-audit` opens its `audit.sync_wait` spans through the global
    // provider (it does not depend on this crate).
    opentelemetry::global::set_tracer_provider(provider.clone());
    let old = PIPELINE.write().ok().and_then(|mut g| {
        let old = g.take();
        *g = Some(Pipeline {
            provider,
            tracer,
            sampler,
        });
        old
    });
    ENABLED.store(true, Ordering::Relaxed);
    if let Some(old) = old {
        stop_provider(old.provider);
    }
    tracing::info!(endpoint = %plan.endpoint, "exporting request traces over OTLP http/protobuf");
    Ok(true)
}

/// Shut `provider` down (exporting what it holds) on a thread of its own:
/// the SDK blocks until its batch thread is done.
fn stop_provider(provider: SdkTracerProvider) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        if let Err(e) = provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "OTLP trace exporter: shutdown");
        }
    })
}

/// Export every finished span now (tests, and before a planned stop).
pub async fn flush() {
    let provider = PIPELINE
        .read()
        .ok()
        .and_then(|g| g.as_ref().map(|p| p.provider.clone()));
    if let Some(p) = provider {
        let _ = tokio::task::spawn_blocking(move || p.force_flush()).await;
    }
}

/// Stop tracing: no new spans; what is queued is exported (bounded by a
/// timeout) before this returns.
pub async fn shutdown() {
    ENABLED.store(false, Ordering::Relaxed);
    let old = PIPELINE.write().ok().and_then(|mut g| g.take());
    if let Some(old) = old {
        drop(old.tracer);
        opentelemetry::global::set_tracer_provider(
            opentelemetry::trace::noop::NoopTracerProvider::new(),
        );
        let handle = stop_provider(old.provider);
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }
}

/// The OTLP exporter, counting what it delivers and what the collector
/// refused, and releasing queue slots ([`BoundedProcessor`]).
#[derive(Debug)]
struct CountingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    queued: Arc<AtomicUsize>,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len();
        self.queued.fetch_sub(n, Ordering::Relaxed);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => ::metrics::counter!(m::OTLP_SPANS_EXPORTED).increment(n as u64),
            Err(e) => {
                tracing::warn!(error = %e, spans = n, "OTLP trace export failed");
                ::metrics::counter!(m::OTLP_SPANS_DROPPED, "reason" => "export_failed")
                    .increment(n as u64);
            }
        }
        result
    }

    fn shutdown_with_timeout(&mut self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&mut self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The SDK's batch processor behind a slot count of the same capacity as
/// its queue: a span that finds every slot taken is dropped here and
/// counted, where the SDK would drop it silently. Slots are released when
/// the batch thread hands spans to the exporter, so the SDK's own queue
/// never overflows.
#[derive(Debug)]
struct BoundedProcessor {
    inner: BatchSpanProcessor,
    queued: Arc<AtomicUsize>,
    capacity: usize,
}

impl SpanProcessor for BoundedProcessor {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.queued.fetch_add(1, Ordering::Relaxed) >= self.capacity {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            m::counter_inc(m::OTLP_SPANS_DROPPED, &[("reason", "queue_full".into())]);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The root span's name per operation: static, so a request names its span
/// without formatting.
fn span_name(op: Operation) -> &'static str {
    match op {
        Operation::Read => "custos read",
        Operation::Create => "custos create",
        Operation::Update => "custos update",
        Operation::Patch => "custos patch",
        Operation::Delete => "custos delete",
        Operation::List => "custos list",
    }
}

/// The sampling decision for a request span named `name`, made before any
/// span exists: its trace id (the caller's, or a new one from the SDK's
/// generator), the caller's context as its remote parent, and `sampler`'s
/// result for them — what the SDK's tracer would compute when starting it.
fn decide(
    sampler: &dyn ShouldSample,
    incoming: Option<TraceContext>,
    name: &'static str,
) -> (TraceId, Option<Context>, SamplingResult) {
    let trace_id = match incoming {
        Some(c) => TraceId::from_bytes(c.trace_id),
        None => RandomIdGenerator::default().new_trace_id(),
    };
    let parent = incoming.map(|c| c.remote_parent());
    let sampling =
        sampler.should_sample(parent.as_ref(), trace_id, name, &SpanKind::Server, &[], &[]);
    (trace_id, parent, sampling)
}

/// The trace id a request's audit events carry: the caller's, sampled or
/// not (the caller's system knows it); else the new trace's when it is
/// sampled. An id drawn for a trace nobody records names nothing — no span
/// is exported under it and no caller knows it — so it is not written.
fn audited_trace_id(
    incoming: Option<&TraceContext>,
    trace_id: TraceId,
    sampling: &SamplingResult,
) -> Option<[u8; 16]> {
    match incoming {
        Some(c) => Some(c.trace_id),
        None if sampling.decision == SamplingDecision::Drop => None,
        None => Some(trace_id.to_bytes()),
    }
}

/// The root span of one sampled API request (see the module docs).
pub struct RequestSpan {
    /// The request's context with its span.
    cx: Context,
}

impl RequestSpan {
    /// Give `req` its trace id and, when tracing is on and the sampler
    /// samples it, start its span, continuing the caller's `traceparent`.
    ///
    /// The trace id (`Request::trace_id`) is the caller's when its
    /// `traceparent` is valid (sampled or not, tracing on or off); with
    /// tracing on and no valid caller context it is the new trace's id when
    /// the request is sampled, and none when it is not. The
    /// sampler is asked as the SDK would ask it for this span (parent,
    /// trace id, name, kind), and its result handed to the SDK; `None` (no
    /// span, nothing allocated) when tracing is off or the request is not
    /// sampled.
    pub fn start(req: &mut Request) -> Option<RequestSpan> {
        let incoming = if req.headers.is_empty() {
            None
        } else {
            req.headers
                .get(TRACEPARENT)
                .and_then(|h| TraceContext::parse(h))
        };
        req.trace_id = incoming.map(|c| c.trace_id);
        if !enabled() {
            return None;
        }
        let name = span_name(req.operation);
        let guard = PIPELINE.read().ok()?;
        let pipeline = guard.as_ref()?;
        let (trace_id, parent, sampling) = decide(pipeline.sampler.as_ref(), incoming, name);
        req.trace_id = audited_trace_id(incoming.as_ref(), trace_id, &sampling);
        if sampling.decision == SamplingDecision::Drop {
            return None;
        }
        let tracer = pipeline.tracer.clone();
        drop(guard);
        let parent = parent.unwrap_or_default();
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Server)
            .with_trace_id(trace_id)
            .with_sampling_result(sampling)
            .start_with_context(&tracer, &parent);
        Some(RequestSpan {
            cx: parent.with_span(span),
        })
    }

    /// Run `fut` (the request's pipeline) with this span current, so its
    /// stages nest under it (children are made only when it is sampled).
    pub async fn run<F: Future>(&self, fut: F) -> F::Output {
        fut.with_context(self.cx.clone()).await
    }

    /// End the span with the request's mount point, operation, id and HTTP
    /// status.
    pub fn finish(self, mount: &str, operation: &'static str, request_id: &str, status: u16) {
        let span = self.cx.span();
        span.set_attributes([
            KeyValue::new("custos.mount", mount.to_string()),
            KeyValue::new("custos.operation", operation),
            KeyValue::new("custos.request_id", request_id.to_string()),
            KeyValue::new("http.response.status_code", i64::from(status)),
        ]);
        // The OTel HTTP server convention: 5xx are errors, 4xx the caller's.
        if status >= 500 {
            span.set_status(Status::error(""));
        }
        span.end();
    }
}

/// A child of the current span named `name`, as a context to make current,
/// when the current span is sampled; `None` (nothing created) otherwise.
pub fn child(name: &'static str) -> Option<Context> {
    if !enabled() {
        return None;
    }
    if !Context::map_current(|cx| cx.span().span_context().is_sampled()) {
        return None;
    }
    let tracer = tracer()?;
    let parent = Context::current();
    let span = tracer.start_with_context(name, &parent);
    Some(parent.with_span(span))
}

/// Run `fut` inside a child span `name` of the current span (see [`child`]);
/// `attrs` are bounded values (mount type, operation), never paths or data.
pub async fn in_span<F: Future>(
    name: &'static str,
    attrs: &[(&'static str, &str)],
    fut: F,
) -> F::Output {
    match child(name) {
        None => fut.await,
        Some(cx) => {
            for (k, v) in attrs {
                cx.span().set_attribute(KeyValue::new(*k, v.to_string()));
            }
            let out = fut.with_context(cx.clone()).await;
            cx.span().end();
            out
        }
    }
}

/// A stage of Raft I/O that [`raft_io`] times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RaftStage {
    /// The log append and its fsync.
    Append,
    /// The state machine apply.
    Apply,
}

#[derive(Debug, Default, Clone, Copy)]
struct RaftTimes {
    append: Option<(SystemTime, SystemTime)>,
    apply: Option<(SystemTime, SystemTime)>,
}

/// Times recorded per log index while tracing is on, taken by the group
/// writer; bounded (entries nobody takes, such as membership entries, are
/// forgotten oldest first).
static RAFT_TIMES: Mutex<BTreeMap<u64, RaftTimes>> = Mutex::new(BTreeMap::new());
const RAFT_TIMES_MAX: usize = 1024;

/// Record that `stage` ran from `start` to `end` for the entries `indexes`
/// (only while tracing is on).
pub fn raft_io(
    stage: RaftStage,
    indexes: impl IntoIterator<Item = u64>,
    start: SystemTime,
    end: SystemTime,
) {
    if !enabled() {
        return;
    }
    let Ok(mut times) = RAFT_TIMES.lock() else {
        return;
    };
    for i in indexes {
        let t = times.entry(i).or_default();
        match stage {
            RaftStage::Append => t.append = Some((start, end)),
            RaftStage::Apply => t.apply = Some((start, end)),
        }
    }
    while times.len() > RAFT_TIMES_MAX {
        times.pop_first();
    }
}

/// Add `raft.append` and `raft.apply` spans for log entry `index` (recorded
/// by [`raft_io`]) under each of `parents` (the `raft.write` spans of the
/// traced writes the entry carried), and forget its times (also when no
/// write in it was traced).
pub fn raft_io_spans(index: u64, parents: &[Context]) {
    let times = RAFT_TIMES
        .lock()
        .ok()
        .and_then(|mut t| t.remove(&index))
        .unwrap_or_default();
    if parents.is_empty() {
        return;
    }
    let Some(tracer) = tracer() else {
        return;
    };
    for parent in parents {
        for (name, t) in [("raft.append", times.append), ("raft.apply", times.apply)] {
            if let Some((start, end)) = t {
                let mut span = tracer
                    .span_builder(name)
                    .with_start_time(start)
                    .start_with_context(&tracer, parent);
                span.end_with_timestamp(end);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::Sampler;

    #[test]
    fn traceparent_parse_and_format() {
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let c = TraceContext::parse(h).unwrap();
        assert_eq!(c.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(c.sampled);
        assert_eq!(c.header(), h);
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
        ] {
            assert_eq!(TraceContext::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn without_an_exporter_the_callers_trace_id_is_kept_and_no_span_made() {
        let mut req = Request::new(Operation::Read, "secret/data/x");
        let h = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        req.headers.insert(TRACEPARENT.into(), h.into());
        assert!(RequestSpan::start(&mut req).is_none());
        assert_eq!(
            trace_id_of(&req).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let mut bad = Request::new(Operation::Read, "secret/data/x");
        bad.headers.insert(TRACEPARENT.into(), "garbage".into());
        assert!(RequestSpan::start(&mut bad).is_none());
        assert_eq!(trace_id_of(&bad), None);
        assert!(child("engine").is_none());
    }

    #[test]
    fn the_sampler_is_asked_up_front_and_honours_the_callers_decision() {
        let ratio = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.01)));
        let caller = |sampled| TraceContext {
            trace_id: [0x4b; 16],
            span_id: [0x0f; 8],
            sampled,
        };
        for sampled in [true, false] {
            let (id, parent, r) = decide(&ratio, Some(caller(sampled)), "custos read");
            assert_eq!(id.to_bytes(), [0x4b; 16]);
            assert!(parent.is_some_and(|p| p.span().span_context().is_remote()));
            let want = if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            };
            assert_eq!(r.decision, want);
        }
        // A new trace: the ratio applies to its (new, random) trace id
        // exactly as the SDK's TraceIdRatioBased decides it.
        let root = Sampler::TraceIdRatioBased(0.01);
        let mut kept = 0;
        for _ in 0..20_000 {
            let (id, parent, r) = decide(&ratio, None, "custos read");
            assert!(parent.is_none());
            let sdk = root.should_sample(None, id, "custos read", &SpanKind::Server, &[], &[]);
            assert_eq!(r.decision, sdk.decision);
            kept += usize::from(r.decision == SamplingDecision::RecordAndSample);
        }
        assert!(
            (100..=320).contains(&kept),
            "{kept} of 20000 sampled at 0.01"
        );
        assert_eq!(span_name(Operation::Read), "custos read");
    }

    #[test]
    fn only_a_callers_or_a_sampled_trace_id_is_audited() {
        let caller = |sampled| TraceContext {
            trace_id: [0x4b; 16],
            span_id: [0x0f; 8],
            sampled,
        };
        let never = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(0.0)));
        let always = Sampler::ParentBased(Box::new(Sampler::AlwaysOn));
        // A caller's trace id is kept whatever the decision.
        for sampled in [true, false] {
            for s in [&never, &always] {
                let c = caller(sampled);
                let (id, _, r) = decide(s, Some(c), "custos read");
                assert_eq!(audited_trace_id(Some(&c), id, &r), Some([0x4b; 16]));
            }
        }
        // A new trace: its id only when it is sampled.
        let (id, _, r) = decide(&never, None, "custos read");
        assert_eq!(r.decision, SamplingDecision::Drop);
        assert_eq!(audited_trace_id(None, id, &r), None);
        let (id, _, r) = decide(&always, None, "custos read");
        assert_eq!(audited_trace_id(None, id, &r), Some(id.to_bytes()));
        assert_eq!(span_name(Operation::List), "custos list");
    }

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            vars.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn plan_reads_the_hcl_setting_and_the_otel_variables() {
        assert_eq!(plan(None, env(&[])).unwrap(), None);
        let p = plan(Some("http://c:4318/"), env(&[])).unwrap().unwrap();
        assert_eq!(p.endpoint, "http://c:4318/v1/traces");
        assert_eq!(p.queue_size, QUEUE_SIZE_DEFAULT);
        let p = plan(
            None,
            env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318")]),
        )
        .unwrap()
        .unwrap();
        assert_eq!(p.endpoint, "http://e:4318/v1/traces");
        // The per-signal variable is used as is and wins over the general one.
        let both = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9999/custom"),
            ("OTEL_BSP_MAX_QUEUE_SIZE", "64"),
        ];
        let p = plan(None, env(&both)).unwrap().unwrap();
        assert_eq!(p.endpoint, "http://t:9999/custom");
        assert_eq!(p.queue_size, 64);
        // The HCL setting wins over the variables.
        let p = plan(Some("http://h:4318/v1/traces"), env(&both))
            .unwrap()
            .unwrap();
        assert_eq!(p.endpoint, "http://h:4318/v1/traces");
        let ep = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://e:4318");
        for off in [
            ("OTEL_SDK_DISABLED", "true"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ] {
            assert_eq!(plan(None, env(&[ep, off])).unwrap(), None);
        }
        assert!(
            plan(
                None,
                env(&[ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")])
            )
            .unwrap()
            .is_some()
        );
        let e = plan(None, env(&[ep, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")])).unwrap_err();
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
        let e = plan(
            None,
            env(&[
                ep,
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("TRACES_PROTOCOL"), "{e}");
        assert!(plan(None, env(&[ep, ("OTEL_TRACES_EXPORTER", "zipkin")])).is_err());
        assert!(plan(None, env(&[ep, ("OTEL_BSP_MAX_QUEUE_SIZE", "0")])).is_err());
    }
}
