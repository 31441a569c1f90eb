# Example: 0–64 spot workers in a regional managed instance group, scaled on the scheduler's
# queue depth from Managed Service for Prometheus.

terraform {
  required_version = ">= 1.5.0"
  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 5.0"
    }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

variable "project" {
  description = "Google Cloud project of the workers."
  type        = string
}

variable "region" {
  description = "Region of the workers."
  type        = string
  default     = "europe-west4"
}

variable "release" {
  description = "buildfleet release whose bootstrapper and worker the instances install."
  type        = string
  default     = "v0.1.0"
}

variable "release_sha256sums_sha256" {
  description = "sha256 of the release's SHA256SUMS (from its release notes, or `curl -sL .../SHA256SUMS | sha256sum` on a machine you trust): the one pin for every file and architecture."
  type        = string
}

module "workers" {
  source = "../../modules/gcp-spot-workers"

  project      = var.project
  region       = var.region
  name         = "buildfleet-workers"
  machine_type = "c2d-standard-8"
  min_replicas = 0
  max_replicas = 64

  release_version           = var.release
  release_sha256sums_sha256 = var.release_sha256sums_sha256

  scheduler_address     = "grpc://10.10.0.5:8980"
  auth_token_secret     = "buildfleet-worker-token"
  drain_timeout_seconds = 25
  worker_args           = ["--worker-concurrency=8"]

  queue_depth_metric = {
    name                       = "prometheus.googleapis.com/buildfleet_scheduler_queue_depth/gauge"
    filter                     = "resource.type = \"prometheus_target\" AND metric.labels.platform = \"default\""
    single_instance_assignment = 4
  }
}

output "instance_group_manager" {
  description = "The workers' managed instance group."
  value       = module.workers.instance_group_manager
}

# The scheduler's cache in GCS (run the scheduler with --object-store set to the output below,
# as the service account given here).
variable "scheduler_service_account" {
  description = "E-mail of the scheduler's service account."
  type        = string
}

module "cache" {
  source = "../../modules/gcp-cache-bucket"

  bucket_name               = "${var.project}-buildfleet-cache"
  location                  = var.region
  prefix                    = "buildfleet"
  expiration_days           = 30
  scheduler_service_account = var.scheduler_service_account
}

output "object_store_url" {
  description = "The scheduler's --object-store."
  value       = module.cache.object_store_url
}
