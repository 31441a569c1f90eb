# Spot workers on a regional managed instance group. Each VM runs the user-data template from
# scripts/user-data as its startup script (at every boot; the bootstrapper is idempotent). The
# worker watches the metadata server's preempted and maintenance-event keys and drains.

locals {
  token_file = "/etc/buildfleet/token"

  bootstrap_args = concat(
    ["--packages=${var.packages}", "--drain-timeout=${var.drain_timeout_seconds}s", "--cloud=gcp", "--"],
    var.worker_args,
  )

  # Where the workers come from: a release pinned by its SHA256SUMS, or explicit pinned URLs.
  source_given = (var.release_version != "" ? var.release_sha256sums_sha256 != "" :
  (var.bootstrap_url != "" && var.bootstrap_sha256 != "" && var.worker_url != "" && var.worker_sha256 != ""))
  source_error = "Set release_version and release_sha256sums_sha256, or bootstrap_url, bootstrap_sha256, worker_url and worker_sha256."

  user_data_values = {
    release_url       = var.release_url
    release_version   = var.release_version
    sha256sums_sha256 = var.release_sha256sums_sha256
    bootstrap_url     = var.bootstrap_url
    bootstrap_sha256  = var.bootstrap_sha256
    bootstrap_path    = "/usr/local/sbin/buildfleet-bootstrap"
    worker_url        = var.worker_url
    worker_sha256     = var.worker_sha256
    scheduler         = var.scheduler_address
    token_file        = local.token_file
    token_command = var.auth_token_secret == "" ? "" : join(" ", [
      "gcloud secrets versions access latest --project=${var.project}",
      "--secret=${var.auth_token_secret}",
    ])
  }

  # Every value is shell-quoted here, so the template can use it as one word.
  startup_script = templatefile("${path.module}/../../../scripts/user-data/worker.sh.tftpl", merge(
    { for k, v in local.user_data_values : k => "'${replace(v, "'", "'\\''")}'" },
    { bootstrap_args = join(" ", [for a in local.bootstrap_args : "'${replace(a, "'", "'\\''")}'"]) },
  ))

  labels = merge({ "app" = "buildfleet", "buildfleet-role" = "worker" }, var.labels)
}

resource "google_service_account" "workers" {
  project      = var.project
  account_id   = substr(var.name, 0, 30)
  display_name = "buildfleet workers (${var.name})"
}

resource "google_secret_manager_secret_iam_member" "token" {
  count     = var.auth_token_secret == "" ? 0 : 1
  project   = var.project
  secret_id = var.auth_token_secret
  role      = "roles/secretmanager.secretAccessor"
  member    = "serviceAccount:${google_service_account.workers.email}"
}

resource "google_storage_bucket_iam_member" "worker_binary" {
  count  = var.worker_artifact_bucket == "" ? 0 : 1
  bucket = var.worker_artifact_bucket
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.workers.email}"
}

resource "google_compute_instance_template" "workers" {
  project      = var.project
  name_prefix  = "${var.name}-"
  machine_type = var.machine_type
  tags         = var.network_tags
  labels       = local.labels

  disk {
    source_image = var.source_image
    disk_size_gb = var.boot_disk_size_gb
    disk_type    = var.boot_disk_type
    boot         = true
    auto_delete  = true
    labels       = local.labels
  }

  network_interface {
    network    = var.network
    subnetwork = var.subnetwork == "" ? null : var.subnetwork
  }

  scheduling {
    provisioning_model          = "SPOT"
    preemptible                 = true
    automatic_restart           = false
    on_host_maintenance         = "TERMINATE"
    instance_termination_action = var.instance_termination_action
  }

  metadata = {
    startup-script         = local.startup_script
    enable-oslogin         = "TRUE"
    block-project-ssh-keys = "TRUE"
  }

  service_account {
    email  = google_service_account.workers.email
    scopes = ["cloud-platform"]
  }

  shielded_instance_config {
    enable_secure_boot = true
  }

  lifecycle {
    create_before_destroy = true
    precondition {
      condition     = local.source_given
      error_message = local.source_error
    }
  }
}

resource "google_compute_region_instance_group_manager" "workers" {
  project                   = var.project
  name                      = var.name
  region                    = var.region
  base_instance_name        = var.name
  distribution_policy_zones = length(var.zones) == 0 ? null : var.zones

  version {
    instance_template = google_compute_instance_template.workers.self_link
  }

  update_policy {
    type                         = "PROACTIVE"
    minimal_action               = "REPLACE"
    instance_redistribution_type = "NONE"
    max_surge_fixed              = max(length(var.zones), 3)
    max_unavailable_fixed        = 0
  }
}

resource "google_compute_region_autoscaler" "workers" {
  project = var.project
  name    = var.name
  region  = var.region
  target  = google_compute_region_instance_group_manager.workers.id

  autoscaling_policy {
    min_replicas    = var.min_replicas
    max_replicas    = var.max_replicas
    cooldown_period = 120

    dynamic "cpu_utilization" {
      for_each = var.queue_depth_metric == null ? [1] : []
      content {
        target = var.cpu_target
      }
    }

    dynamic "metric" {
      for_each = var.queue_depth_metric == null ? [] : [var.queue_depth_metric]
      content {
        name                       = metric.value.name
        filter                     = metric.value.filter
        single_instance_assignment = metric.value.single_instance_assignment
      }
    }

    # Scale in gently: at most a quarter of the workers per ten minutes.
    scale_in_control {
      time_window_sec = 600
      max_scaled_in_replicas {
        percent = 25
      }
    }
  }
}
