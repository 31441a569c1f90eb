# A GCS bucket for the scheduler's cache (--object-store=gs://BUCKET/PREFIX): uniform access,
# no public access, the lifecycle rule that deletes objects nobody uses, and the scheduler's
# service account allowed to use objects in this bucket only.

resource "google_storage_bucket" "cache" {
  name                        = var.bucket_name
  location                    = var.location
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  labels                      = var.labels

  # No soft delete: GCS keeps deleted objects for 7 days by default and bills them, which for a
  # cache means every expired blob, every corrupt object deleted and every replaced
  # action-cache entry is stored a week longer for nothing.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  # The scheduler stamps every object's custom time when it writes it and moves it forward when
  # it uses an object older than its refresh age: objects no build used for expiration_days go.
  lifecycle_rule {
    condition {
      days_since_custom_time = var.expiration_days
      matches_prefix         = var.prefix == "" ? [] : ["${var.prefix}/"]
    }
    action {
      type = "Delete"
    }
  }
}

resource "google_storage_bucket_iam_member" "scheduler" {
  count  = var.scheduler_service_account == "" ? 0 : 1
  bucket = google_storage_bucket.cache.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${var.scheduler_service_account}"
}
