//! The audit query answered from Elasticsearch (`sys/audit-query?source=elasticsearch`).
//!
//! Data comes from the documents an `elasticsearch` audit sink shipped: the
//! hashed event JSON, `_id` = event id, in indices `<index>-*`. One query is a
//! series of `_search` calls filtered on the request path, `type: response`,
//! no `error`, and the time range, sorted by `time` and paged by time (with
//! the ids seen at the page's last millisecond, so equal timestamps are
//! neither lost nor counted twice). Each hit's `_source` becomes the same
//! [`Posting`] the local index holds and goes through the same
//! [`Aggregator`], so both sources answer alike — including the transit
//! `key_versions` read from `_source` (`response.key_versions`) and the
//! `max_key_version` filter, which the aggregator applies: indices created
//! before the sink's template mapped that field cannot filter on it.
//!
//! String fields are matched both as `field` and `field.keyword`, so the
//! query works whether the index template maps them as `keyword` or
//! dynamic mapping made them `text` with a `keyword` sub-field; every hit is
//! checked again exactly before it counts. A query for one node (`node`)
//! adds a filter on the documents' `node_id` (the node that wrote the event).

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde_json::{Value, json};
use zeroize::Zeroizing;

use super::view::EventView;
use super::{Aggregator, Posting, QueryAnswer, QueryError, QueryParams};

/// Hits per `_search` page.
const PAGE: usize = 1000;
/// The largest page ES allows by default (`index.max_result_window`).
const MAX_PAGE: usize = 10_000;

/// Where the sink's documents are and how to authenticate.
#[derive(Clone)]
pub struct EsOptions {
    /// Base URL, e.g. `http://127.0.0.1:9200`.
    pub url: String,
    /// Index name prefix; documents live in `<index>-*`.
    pub index: String,
    pub api_key: Option<Zeroizing<String>>,
    pub username: Option<String>,
    pub password: Option<Zeroizing<String>>,
}

impl fmt::Debug for EsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EsOptions")
            .field("url", &self.url)
            .field("index", &self.index)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl EsOptions {
    /// From an `elasticsearch` audit device's options: `url` (required),
    /// `index` (default `custos-audit`), `api_key`, `username`/`password`.
    /// Other options (the sink's) are ignored here.
    pub fn from_device_options(
        options: &BTreeMap<String, String>,
    ) -> Result<EsOptions, QueryError> {
        let url = options
            .get("url")
            .filter(|u| !u.is_empty())
            .ok_or_else(|| QueryError::Unavailable("elasticsearch device has no url".into()))?;
        Ok(EsOptions {
            url: url.trim_end_matches('/').to_owned(),
            index: options
                .get("index")
                .filter(|i| !i.is_empty())
                .cloned()
                .unwrap_or_else(|| "custos-audit".into()),
            api_key: options.get("api_key").map(|k| Zeroizing::new(k.clone())),
            username: options.get("username").cloned(),
            password: options.get("password").map(|p| Zeroizing::new(p.clone())),
        })
    }
}

/// Runs audit queries against Elasticsearch.
#[derive(Debug, Clone)]
pub struct EsQuery {
    opts: EsOptions,
    http: reqwest::Client,
}

/// A `bool.should` matching `value` on `field` or `field.keyword`.
fn exact(field: &str, value: &str) -> Value {
    json!({"bool": {"should": [
        {"term": {field: value}},
        {"term": {format!("{field}.keyword"): value}},
    ], "minimum_should_match": 1}})
}

impl EsQuery {
    pub fn new(opts: EsOptions) -> Result<EsQuery, QueryError> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| QueryError::Elasticsearch(e.to_string()))?;
        Ok(EsQuery { opts, http })
    }

    fn search_url(&self) -> String {
        format!(
            "{}/{}-*/_search?ignore_unavailable=true&allow_no_indices=true",
            self.opts.url, self.opts.index
        )
    }

    async fn search(&self, body: &Value) -> Result<Value, QueryError> {
        let mut req = self.http.post(self.search_url()).json(body);
        if let Some(k) = &self.opts.api_key {
            req = req.header("Authorization", format!("ApiKey {}", k.as_str()));
        } else if let Some(u) = &self.opts.username {
            req = req.basic_auth(u, self.opts.password.as_ref().map(|p| p.as_str()));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| QueryError::Elasticsearch(format!("request failed: {e}")))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| QueryError::Elasticsearch(format!("reading the answer: {e}")))?;
        if !status.is_success() {
            let mut t = text;
            t.truncate(400);
            return Err(QueryError::Elasticsearch(format!(
                "_search answered {status}: {t}"
            )));
        }
        serde_json::from_str(&text)
            .map_err(|e| QueryError::Elasticsearch(format!("unparseable _search answer: {e}")))
    }

    /// Answer `q` from Elasticsearch, in the same shape as the local index.
    pub async fn query(&self, q: &QueryParams) -> Result<QueryAnswer, QueryError> {
        q.validate()?;
        let mut agg = Aggregator::new(q);
        // ES dates have millisecond precision: over-select to whole
        // milliseconds, the aggregator filters to the nanosecond.
        let until_ms = if q.until == i64::MAX {
            None
        } else {
            Some(q.until.div_euclid(1_000_000) + 1)
        };
        let mut cursor_ms = (q.since != i64::MIN).then(|| q.since.div_euclid(1_000_000));
        let mut seen_at_cursor: HashSet<String> = HashSet::new();
        let mut page = PAGE;
        loop {
            let mut range = serde_json::Map::new();
            if let Some(c) = cursor_ms {
                range.insert("gte".into(), json!(c));
            }
            if let Some(u) = until_ms {
                range.insert("lte".into(), json!(u));
            }
            range.insert("format".into(), json!("epoch_millis"));
            let mut filter = vec![
                exact("request.path", &q.path),
                exact("type", "response"),
                exact("request.operation", &q.operation),
            ];
            if let Some(node) = &q.node {
                filter.push(exact("node_id", node));
            }
            if range.len() > 1 {
                filter.push(json!({"range": {"time": range}}));
            }
            let body = json!({
                "size": page,
                "sort": [{"time": {"order": "asc"}}],
                "query": {"bool": {
                    "filter": filter,
                    "must_not": [{"exists": {"field": "error"}}],
                }},
            });
            let answer = self.search(&body).await?;
            let hits = answer
                .pointer("/hits/hits")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let full = hits.len() >= page;
            let mut fresh = 0usize;
            let mut last_ms = cursor_ms;
            let mut at_last: Vec<String> = Vec::new();
            for hit in hits {
                let id = hit
                    .get("_id")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned();
                let ms = hit.pointer("/sort/0").and_then(Value::as_i64).or_else(|| {
                    hit.pointer("/sort/0")
                        .and_then(Value::as_f64)
                        .map(|f| f as i64)
                });
                if ms.is_some() && ms == cursor_ms && seen_at_cursor.contains(&id) {
                    continue;
                }
                fresh += 1;
                if ms != last_ms {
                    at_last.clear();
                    last_ms = ms;
                }
                at_last.push(id);
                let Some(source) = hit.get("_source").cloned() else {
                    continue;
                };
                match EventView::from_value(source) {
                    Ok(ev) if ev.request.path == q.path => match Posting::from_event(&ev, 0) {
                        Some(p) => agg.push(p),
                        None => continue,
                    },
                    Ok(_) => continue,
                    Err(e) => {
                        tracing::warn!(error = %e, "elasticsearch audit document skipped");
                    }
                }
            }
            if !full {
                break;
            }
            if fresh == 0 {
                // A whole page inside one millisecond, all seen: widen.
                if page >= MAX_PAGE {
                    return Err(QueryError::Elasticsearch(
                        "more than 10000 events within one millisecond; cannot page".into(),
                    ));
                }
                page = (page * 4).min(MAX_PAGE);
                continue;
            }
            if last_ms == cursor_ms {
                seen_at_cursor.extend(at_last);
            } else {
                seen_at_cursor = at_last.into_iter().collect();
                cursor_ms = last_ms;
            }
            if cursor_ms.is_none() {
                // Hits without sort values: nothing to page on.
                break;
            }
        }
        Ok(agg.finish("elasticsearch"))
    }
}
