output "url" {
  description = "The service's URL (map your tracking domain to it with a domain mapping or a load balancer)."
  value       = google_cloud_run_v2_service.trackpoint.uri
}

output "service_name" {
  description = "The Cloud Run service."
  value       = google_cloud_run_v2_service.trackpoint.name
}

output "service_account_email" {
  description = "The identity the tracker runs as: grant it what your collectors use (Pub/Sub, GCS for logs)."
  value       = google_service_account.trackpoint.email
}
