variable "subscription_id" {
  description = "Azure subscription to deploy into."
  type        = string
}

variable "location" {
  description = "Azure region, e.g. westeurope."
  type        = string
}

variable "resource_group_name" {
  description = "Resource group created for the tracker, its environment and its logs."
  type        = string
  default     = "trackpoint"
}

variable "name" {
  description = "Name of the container app (lower-case letters, digits and hyphens) and prefix of the other resources."
  type        = string
  default     = "trackpoint"
}

variable "image" {
  description = "The trackpoint image built from the repository's Dockerfile, e.g. myregistry.azurecr.io/trackpoint:0.1.0 (public, or pullable by the app's identity)."
  type        = string
}

variable "config_yaml" {
  description = "The trackpoint configuration file's text, e.g. file(\"trackpoint.yaml\"). It must set admin.host to 0.0.0.0 (the probes ask the admin port), admin.token_env to TRACKPOINT_ADMIN_TOKEN and name the signing key's variable, TRACKPOINT_SIGNING_KEY, in signing.keys."
  type        = string
}

variable "key_vault_id" {
  description = "Key Vault (RBAC authorization) that holds the signing key; the app's identity is granted Key Vault Secrets User on it."
  type        = string
}

variable "signing_key_secret_id" {
  description = "Versionless id of the Key Vault secret holding the URL signing key (at least 16 bytes), e.g. https://my-vault.vault.azure.net/secrets/trackpoint-signing-key; given to every replica as TRACKPOINT_SIGNING_KEY."
  type        = string
}

variable "admin_token_secret_id" {
  description = "Versionless id of the Key Vault secret (same vault) holding the admin port's bearer token (at least 16 bytes); given to every replica as TRACKPOINT_ADMIN_TOKEN, which config_yaml must name in admin.token_env."
  type        = string
}

variable "workers" {
  description = "Worker processes per replica (`trackpoint run --workers`), one per vCPU: the replica gets workers vCPUs and 2 GiB per vCPU."
  type        = number
  default     = 2

  validation {
    condition     = contains([1, 2], var.workers)
    error_message = "workers must be 1 or 2: a consumption-plan replica has at most 2 vCPUs."
  }
}

variable "min_replicas" {
  description = "Fewest replicas kept running (never 0: a cold start costs the first requests their latency)."
  type        = number
  default     = 2
}

variable "max_replicas" {
  description = "Most replicas the CPU rule starts."
  type        = number
  default     = 10
}

variable "cpu_target_percent" {
  description = "Average CPU utilisation of the replicas the scale rule aims at."
  type        = number
  default     = 60
}

variable "log_retention_days" {
  description = "How long Log Analytics keeps the tracker's own logs (not the events: those go to the collectors)."
  type        = number
  default     = 30
}
