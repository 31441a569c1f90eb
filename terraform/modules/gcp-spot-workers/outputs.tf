output "instance_group_manager" {
  description = "Self link of the workers' regional managed instance group."
  value       = google_compute_region_instance_group_manager.workers.self_link
}

output "instance_template" {
  description = "Self link of the current instance template."
  value       = google_compute_instance_template.workers.self_link
}

output "autoscaler" {
  description = "ID of the workers' autoscaler."
  value       = google_compute_region_autoscaler.workers.id
}

output "service_account_email" {
  description = "Email of the workers' service account, for granting further access."
  value       = google_service_account.workers.email
}
