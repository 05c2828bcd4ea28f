# Custos server configuration: a single production node.
#
#   custos server -config docs/examples/server.hcl
#
# The syntax is OpenBao's (HCL). Unknown keys are errors, so a typo never
# silently falls back to a default. For 3 or 5 nodes, give each node its own
# node_id, api_addr and cluster_addr.

ui            = false
log_level     = "info"
disable_mlock = true

api_addr     = "http://127.0.0.1:8200"
cluster_addr = "http://127.0.0.1:8201"
cluster_name = "custos-prod"

# Go durations ("768h", "30m") or integer seconds.
default_lease_ttl = "768h"
max_lease_ttl     = "768h"

# Exactly one storage block; Raft is the only storage.
storage "raft" {
  path    = "/var/lib/custos/raft"
  node_id = "node1"
}

listener "tcp" {
  address = "127.0.0.1:8200"

  # Production: set tls_disable = false (the default) and point these at a
  # PEM certificate chain and key; both files must exist at start-up.
  tls_disable   = true
  tls_cert_file = "/etc/custos/tls.crt"
  tls_key_file  = "/etc/custos/tls.key"

  # Bytes. Unset or 0 = 32 MiB; negative = no limit.
  max_request_size = 33554432

  telemetry {
    # Let Prometheus scrape /v1/sys/metrics without a token on this listener.
    unauthenticated_metrics_access = true
  }
}

telemetry {
  metrics_prefix            = "custos"
  prometheus_retention_time = "24h"
  disable_hostname          = true
  # Default for listeners whose own telemetry block does not set it.
  unauthenticated_metrics_access = false
}

# The durable local audit log: the source of truth. A request fails unless
# its event is on disk here. `tail -F /var/lib/custos/audit/audit.log`
# follows it as it is written (audit.log is always the active segment).
audit "file" "file" {
  description = "local audit log"
  options {
    file_path = "/var/lib/custos/audit"
    log_raw   = "false"
    # The defaults; see the README's file device table.
    # segment_size     = "64MiB"
    # segment_duration = "1h"
    # min_free_bytes   = "256MiB"  # disk guard: below it requests and sys/health answer 503
    # retention_max_age   = "90days"  # unset: keep every segment
    # retention_max_bytes = "50GiB"   # unset: keep every segment
  }
}

# Shippers stream the local log to Kafka and Elasticsearch. One-line form:
# HCL 2 allows a nested block on one line only as an object attribute.
audit "kafka" "kafka" {
  options = { brokers = "127.0.0.1:9092", topic = "custos-audit" }
}

audit "elasticsearch" "es" {
  description = "search and dashboards"
  options {
    url   = "http://127.0.0.1:9200"
    index = "custos-audit"
  }
}
