output "url" {
  description = "The app's public URL (bind your tracking domain to it as a custom domain)."
  value       = "https://${azurerm_container_app.trackpoint.ingress[0].fqdn}"
}

output "container_app_name" {
  description = "The container app."
  value       = azurerm_container_app.trackpoint.name
}

output "identity_principal_id" {
  description = "Principal of the app's identity: grant it what your collectors use (Event Hubs, Blob Storage for logs)."
  value       = azurerm_user_assigned_identity.trackpoint.principal_id
}
