variable "project" {
  description = "Google Cloud project the workers run in."
  type        = string
}

variable "region" {
  description = "Region of the regional managed instance group."
  type        = string
}

variable "zones" {
  description = "Zones the group spreads workers over; empty lets the group use every zone of the region."
  type        = list(string)
  default     = []
}

variable "name" {
  description = "Name of the instance template prefix, managed instance group, autoscaler and service account."
  type        = string
  default     = "buildfleet-workers"
}

variable "machine_type" {
  description = "Machine type of the workers."
  type        = string
  default     = "c2d-standard-8"
}

variable "source_image" {
  description = "Boot image: any systemd Linux with curl and sha256sum; Google's images include gcloud for token_command."
  type        = string
  default     = "debian-cloud/debian-12"
}

variable "boot_disk_size_gb" {
  description = "Size of each worker's boot disk, which holds the file cache and the append-only caches."
  type        = number
  default     = 100
}

variable "boot_disk_type" {
  description = "Type of the boot disk (pd-balanced, pd-ssd, hyperdisk-balanced…)."
  type        = string
  default     = "pd-balanced"
}

variable "network" {
  description = "VPC network of the workers."
  type        = string
  default     = "default"
}

variable "subnetwork" {
  description = "Subnetwork of the workers; empty for auto-mode networks."
  type        = string
  default     = ""
}

variable "network_tags" {
  description = "Network tags of the workers, for firewall rules (they need egress only)."
  type        = list(string)
  default     = ["buildfleet-worker"]
}

variable "instance_termination_action" {
  description = "What GCE does to a preempted spot VM: DELETE (the group recreates it when capacity returns) or STOP."
  type        = string
  default     = "DELETE"
  validation {
    condition     = contains(["DELETE", "STOP"], var.instance_termination_action)
    error_message = "instance_termination_action must be DELETE or STOP."
  }
}

variable "min_replicas" {
  description = "Fewest workers the autoscaler keeps."
  type        = number
  default     = 0
}

variable "max_replicas" {
  description = "Most workers the autoscaler may run."
  type        = number
  default     = 64
}

variable "cpu_target" {
  description = "Target average CPU utilization (0–1) when no queue-depth metric is configured."
  type        = number
  default     = 0.4
}

variable "queue_depth_metric" {
  description = "Cloud Monitoring metric of the scheduler's queue depth (e.g. prometheus.googleapis.com/buildfleet_scheduler_queue_depth/gauge from Managed Service for Prometheus) and the queued actions each worker should take; null scales on CPU."
  type = object({
    name                       = string
    filter                     = string
    single_instance_assignment = number
  })
  default = null
}

variable "release_version" {
  description = "buildfleet release the workers install, e.g. \"v0.1.0\": the startup script fetches RELEASE_URL/VERSION/SHA256SUMS, checks it against release_sha256sums_sha256, and installs the bootstrapper and the worker of the instance's architecture listed in it. Empty: use bootstrap_url and worker_url with their sha256 instead."
  type        = string
  default     = ""
  validation {
    condition     = can(regex("^([A-Za-z0-9][A-Za-z0-9._+-]*)?$", var.release_version))
    error_message = "release_version must be a plain version such as v0.1.0."
  }
}

variable "release_sha256sums_sha256" {
  description = "sha256 of the release's SHA256SUMS file (64 hex digits): one pin for every file and architecture of the release. Required with release_version."
  type        = string
  default     = ""
  validation {
    condition     = var.release_sha256sums_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.release_sha256sums_sha256))
    error_message = "release_sha256sums_sha256 must be 64 lowercase hex digits."
  }
}

variable "release_url" {
  description = "https:// base URL of buildfleet releases (fetched with curl by the user-data, so https only; no ?query, #fragment or trailing /); release VERSION's files are under RELEASE_URL/VERSION/ (GitHub's layout; a mirror keeps it)."
  type        = string
  default     = "https://github.com/buildfleet/buildfleet/releases/download"
  validation {
    condition     = can(regex("^https://[^/?#[:space:]]+(/[^?#[:space:]]*[^/?#[:space:]])?$", var.release_url))
    error_message = "release_url must be an https:// URL without a query (?), fragment (#) or trailing /; the release's files are appended to its path after a /."
  }
}

variable "bootstrap_url" {
  description = "https:// URL of the bootstrap binary downloaded by the startup script (without release_version)."
  type        = string
  default     = ""
}

variable "bootstrap_sha256" {
  description = "sha256 of the bootstrap binary (64 hex digits); the startup script refuses any other file."
  type        = string
  default     = ""
  validation {
    condition     = var.bootstrap_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.bootstrap_sha256))
    error_message = "bootstrap_sha256 must be 64 lowercase hex digits."
  }
}

variable "worker_url" {
  description = "https://, gs:// or s3:// URL of the worker binary, fetched by the bootstrapper (without release_version)."
  type        = string
  default     = ""
}

variable "worker_sha256" {
  description = "sha256 of the worker binary (64 hex digits)."
  type        = string
  default     = ""
  validation {
    condition     = var.worker_sha256 == "" || can(regex("^[0-9a-f]{64}$", var.worker_sha256))
    error_message = "worker_sha256 must be 64 lowercase hex digits."
  }
}

variable "worker_artifact_bucket" {
  description = "Cloud Storage bucket the workers may read the worker binary from (for gs:// URLs); empty grants nothing."
  type        = string
  default     = ""
}

variable "scheduler_address" {
  description = "The scheduler as the workers reach it: grpc://HOST:PORT or grpcs://HOST:PORT."
  type        = string
}

variable "auth_token_secret" {
  description = "Secret Manager secret (name or projects/…/secrets/NAME) holding the scheduler token; empty when the scheduler needs none."
  type        = string
  default     = ""
}

variable "drain_timeout_seconds" {
  description = "The worker's --drain-timeout. GCE gives spot VMs about 30 s after a preemption notice."
  type        = number
  default     = 25
}

variable "packages" {
  description = "OS packages the bootstrapper installs for actions: \"default\", \"none\", or a comma-separated list that may include \"default\"."
  type        = string
  default     = "default"
}

variable "worker_args" {
  description = "Extra worker flags, e.g. [\"--worker-concurrency=8\", \"--platform\", \"pool=spot\"]."
  type        = list(string)
  default     = []
}

variable "labels" {
  description = "Labels added to the instances and their disks."
  type        = map(string)
  default     = {}
}
