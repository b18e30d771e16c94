# One-shot `reno provision`: creates or updates the priority streams, their worker consumers, the
# dead letters, the history, presence and registry buckets, with three replicas on the hub cluster,
# and stores the image's registry/events.toml as the registry in force. Idempotent; run it after the
# hub comes up, after a change of the stream settings below, and after shipping a new registry
# file in the image (it replaces changes made with `reno registry`; see docs/operations.md).
# Registered once, then run on demand:
#
#   nomad job run -var reno_image=registry.example.com/reno:0.1.0 deploy/nomad/reno-provision.nomad.hcl
#   nomad job dispatch reno-provision
#
# Needs in Nomad variables: nomad/jobs/reno-provision, item reno_seed (the reno user's seed).

variable "reno_image" {
  description = "The reno image, built from the Dockerfile at the repository root."
  type        = string
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "reno-provision" {
  datacenters = var.datacenters
  type        = "batch"

  # Each `nomad job dispatch` runs it once.
  parameterized {
    payload = "forbidden"
  }

  group "provision" {
    count = 1

    # It fails at once while no hub node answers: try again a few times, then report the failure.
    restart {
      attempts = 5
      interval = "10m"
      delay    = "15s"
      mode     = "fail"
    }

    reschedule {
      attempts  = 0
      unlimited = false
    }

    task "provision" {
      driver = "docker"

      config {
        image   = var.reno_image
        command = "reno"
        args    = ["provision", "--registry", "/app/registry/events.toml"]
      }

      # Three replicas on the hub cluster; every other stream setting (docs/configuration.md,
      # [streams]) keeps its default unless set here, and what is set here must be set in
      # reno.nomad.hcl too. Keep the byte limits together below the hub's JetStream
      # max_file_store (8 GB in nats/hub-cluster.conf).
      template {
        data        = <<-EOT
          [nats]
          url = "{{ range $index, $hub := nomadService "reno-hub" }}{{ if $index }},{{ end }}nats://{{ .Address }}:{{ .Port }}{{ end }}"
          nkey_seed_file = "{{ env "NOMAD_SECRETS_DIR" }}/nats.nk"

          [streams]
          replicas = 3

          [log]
          format = "json"
        EOT
        destination = "local/reno.toml"
      }

      template {
        data        = "{{ with nomadVar \"nomad/jobs/reno-provision\" }}{{ .reno_seed }}{{ end }}"
        destination = "secrets/nats.nk"
        perms       = "0400"
        uid         = 10001
        gid         = 10001
      }

      env {
        RENO_CONFIG = "${NOMAD_TASK_DIR}/reno.toml"
      }

      resources {
        cpu    = 200
        memory = 128
      }
    }
  }
}
