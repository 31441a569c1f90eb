output "bucket_name" {
  description = "Name of the cache bucket."
  value       = google_storage_bucket.cache.name
}

output "object_store_url" {
  description = "Value of the scheduler's --object-store flag."
  value       = var.prefix == "" ? "gs://${google_storage_bucket.cache.name}" : "gs://${google_storage_bucket.cache.name}/${var.prefix}"
}
