# trackpoint on Cloud Run: one service whose instances each run the supervisor and `workers` workers. The
# configuration is a Secret Manager secret mounted as the image's configuration file; the ports and the drain
# timeout are read from it, so the service and the configuration cannot disagree.

provider "google" {
  project = var.project_id
  region  = var.region
}

locals {
  config           = yamldecode(var.config_yaml)
  port             = try(local.config.server.port, 8080)
  admin_port       = try(local.config.admin.port, 8081)
  admin_host       = try(local.config.admin.host, "127.0.0.1")
  admin_token_env  = try(local.config.admin.token_env, null)
  drain_timeout_s  = try(local.config.server.drain_timeout_s, 10)
  shutdown_delay_s = try(local.config.server.shutdown_delay_s, 0)
  # Cloud Run's memory range for `workers` vCPUs, in GiB.
  memory_gib   = endswith(var.memory, "Gi") ? tonumber(trimsuffix(var.memory, "Gi")) : tonumber(trimsuffix(var.memory, "Mi")) / 1024
  memory_range = { "1" = [0.125, 4], "2" = [0.125, 8], "4" = [2, 16], "8" = [4, 32] }[tostring(var.workers)]
  # A log collector that ships its files makes one last pass after the drain, bounded by its
  # ship.shutdown_timeout_s (30 s unless set).
  ship_s = max(0, [
    for collector in values(try(local.config.collectors, {})) :
    try(collector.ship.shutdown_timeout_s, 30) + 1 if try(collector.ship.url, null) != null
  ]...)
}

resource "google_service_account" "trackpoint" {
  account_id   = var.name
  display_name = "trackpoint tracker"
}

# The configuration holds no secrets (keys come from the environment), but a secret is what Cloud Run mounts as a file.
resource "google_secret_manager_secret" "config" {
  secret_id = "${var.name}-config"

  replication {
    auto {}
  }
}

resource "google_secret_manager_secret_version" "config" {
  secret      = google_secret_manager_secret.config.id
  secret_data = var.config_yaml
}

resource "google_secret_manager_secret_iam_member" "config" {
  secret_id = google_secret_manager_secret.config.id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.trackpoint.email}"
}

resource "google_secret_manager_secret_iam_member" "signing_key" {
  secret_id = var.signing_key_secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.trackpoint.email}"
}

resource "google_secret_manager_secret_iam_member" "admin_token" {
  secret_id = var.admin_token_secret_id
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.trackpoint.email}"
}

resource "google_cloud_run_v2_service" "trackpoint" {
  name                = var.name
  location            = var.region
  ingress             = "INGRESS_TRAFFIC_ALL"
  deletion_protection = true

  template {
    service_account                  = google_service_account.trackpoint.email
    max_instance_request_concurrency = var.max_concurrency

    scaling {
      min_instance_count = var.min_instances
      max_instance_count = var.max_instances
    }

    containers {
      image = var.image
      args  = ["--workers", tostring(var.workers)]

      ports {
        name           = "http1"
        container_port = local.port
      }

      env {
        name = "TRACKPOINT_SIGNING_KEY"
        value_source {
          secret_key_ref {
            secret  = var.signing_key_secret_id
            version = "latest"
          }
        }
      }

      env {
        name = "TRACKPOINT_ADMIN_TOKEN"
        value_source {
          secret_key_ref {
            secret  = var.admin_token_secret_id
            version = "latest"
          }
        }
      }

      resources {
        limits = {
          cpu    = tostring(var.workers)
          memory = var.memory
        }
        # Collectors flush in the background (every 100 ms, retries, spool replay): CPU must stay allocated
        # between requests, or batches would wait for the next request to move.
        cpu_idle          = false
        startup_cpu_boost = true
      }

      # The image reads /etc/trackpoint/trackpoint.yaml (TRACKPOINT_CONFIG's default).
      volume_mounts {
        name       = "config"
        mount_path = "/etc/trackpoint"
      }

      # /startupz: the workers serve the tracking port. Not /readyz, which also fails while a `required`
      # collector's target is down: during such an outage no new instance could start (no scale-out, no new
      # revision), each killed after this budget. Cloud Run sends traffic once this probe passes.
      startup_probe {
        http_get {
          path = "/startupz"
          port = local.admin_port
        }
        period_seconds    = 2
        timeout_seconds   = 1
        failure_threshold = 30
      }

      liveness_probe {
        http_get {
          path = "/healthz"
          port = local.admin_port
        }
        period_seconds    = 10
        timeout_seconds   = 2
        failure_threshold = 3
      }
    }

    volumes {
      name = "config"
      secret {
        secret = google_secret_manager_secret.config.secret_id
        items {
          # A pinned version: a new configuration is a new revision, rolled out like a new image.
          version = google_secret_manager_secret_version.config.version
          path    = "trackpoint.yaml"
        }
      }
    }
  }

  lifecycle {
    precondition {
      condition     = local.memory_gib >= local.memory_range[0] && local.memory_gib <= local.memory_range[1]
      error_message = "memory: a Cloud Run instance of ${var.workers} vCPU takes ${local.memory_range[0]} to ${local.memory_range[1]} GiB."
    }
    precondition {
      condition     = local.admin_host == "0.0.0.0"
      error_message = "config_yaml: admin.host must be 0.0.0.0, or the probes cannot reach the admin port."
    }
    precondition {
      condition     = local.admin_token_env == "TRACKPOINT_ADMIN_TOKEN"
      error_message = "config_yaml: admin.token_env must be TRACKPOINT_ADMIN_TOKEN (admin_token_secret_id); a tracker refuses a public admin port without a token."
    }
    precondition {
      condition     = local.shutdown_delay_s + local.drain_timeout_s + local.ship_s <= 5
      error_message = "config_yaml: server.shutdown_delay_s plus drain_timeout_s (plus a shipping log collector's ship.shutdown_timeout_s + 1) must be at most 5: Cloud Run sends SIGKILL 10 s after SIGTERM, and the supervisor allows itself 5 s more."
    }
  }

  depends_on = [
    google_secret_manager_secret_iam_member.config,
    google_secret_manager_secret_iam_member.signing_key,
    google_secret_manager_secret_iam_member.admin_token,
  ]
}

resource "google_cloud_run_v2_service_iam_member" "public" {
  count    = var.allow_unauthenticated ? 1 : 0
  name     = google_cloud_run_v2_service.trackpoint.name
  location = google_cloud_run_v2_service.trackpoint.location
  role     = "roles/run.invoker"
  member   = "allUsers"
}
