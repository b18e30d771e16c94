# The reno hub: a 3-node nats-server cluster (nats/hub-cluster.conf with nats/hub-accounts.conf)
# holding JetStream, where reno's processes and the publishing services connect and the edges
# attach as leaf nodes. Streams and buckets get three replicas from `reno provision`
# (streams.replicas = 3, deploy/nomad/reno-provision.nomad.hcl).
#
# Run from the repository root (the configs are read from nats/ when the job is submitted):
#
#   nomad job run -var 'hub_hosts=["10.0.0.1","10.0.0.2","10.0.0.3"]' deploy/nomad/reno-hub.nomad.hcl
#
# Needs on each hub machine: a Nomad client with the exec driver, the host volume
# "reno-jetstream" (a directory owned by the system user "nats", uid and gid 2222, as on the edges)
# and its address in hub_hosts.
# Needs in Nomad variables (docs/operations.md, "Secrets"): the public keys at nomad/jobs.
#
# nats-server is the official release binary of the version pinned in scripts/nats-server.lock,
# fetched by Nomad with its sha256, run with the exec driver: the release the tests run, and no
# container layer between JetStream and its disk.

variable "hub_hosts" {
  description = "The addresses of the three hub machines; every node routes to all of them."
  type        = list(string)
}

variable "datacenters" {
  type    = list(string)
  default = ["dc1"]
}

job "reno-hub" {
  datacenters = var.datacenters
  type        = "service"

  # One node at a time, and only once the restarted one reports healthy (its JetStream caught up),
  # so that two of three replicas always hold every stream.
  update {
    max_parallel      = 1
    health_check      = "checks"
    min_healthy_time  = "30s"
    healthy_deadline  = "10m"
    progress_deadline = "15m"
    auto_revert       = false
  }

  group "hub" {
    count = 3

    constraint {
      operator = "distinct_hosts"
      value    = "true"
    }

    constraint {
      attribute = "${attr.unique.network.ip-address}"
      operator  = "set_contains_any"
      value     = join(",", var.hub_hosts)
    }

    # A hub node's data must come back on its own machine; never move it elsewhere.
    reschedule {
      attempts  = 0
      unlimited = false
    }

    restart {
      attempts = 10
      interval = "30m"
      delay    = "15s"
      mode     = "delay"
    }

    network {
      port "client" {
        static = 4222
      }
      port "cluster" {
        static = 6222
      }
      port "leaf" {
        static = 7422
      }
      port "monitor" {
        static = 8222
      }
    }

    volume "jetstream" {
      type      = "host"
      source    = "reno-jetstream"
      read_only = false
    }

    service {
      name     = "reno-hub"
      provider = "nomad"
      port     = "client"
      tags     = ["nats"]

      check {
        name     = "healthz"
        type     = "http"
        port     = "monitor"
        path     = "/healthz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    service {
      name     = "reno-hub-leaf"
      provider = "nomad"
      port     = "leaf"
      tags     = ["nats-leaf"]

      check {
        name     = "leaf-port"
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }

    service {
      name     = "reno-hub-monitor"
      provider = "nomad"
      port     = "monitor"
      tags     = ["nats-monitor", "metrics"]

      check {
        name     = "healthz"
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "nats-server" {
      driver = "exec"
      user   = "nats"

      artifact {
        source      = "https://github.com/nats-io/nats-server/releases/download/v2.14.6/nats-server-v2.14.6-linux-amd64.tar.gz"
        destination = "local/"
        options {
          # The archive's sha256, as the official nats:2.14.6 image build checks it. Bump the
          # version here, in the command and in scripts/nats-server.lock together.
          checksum = "sha256:61c3d55f69f61ec616b75782250936445f2819e9e5f2ae6159b10a31abd2200c"
        }
      }

      # The repository's own configs, unchanged, side by side so that the include resolves.
      template {
        data          = file("nats/hub-cluster.conf")
        destination   = "local/nats/hub-cluster.conf"
        change_mode   = "noop"
      }

      template {
        data          = file("nats/hub-accounts.conf")
        destination   = "local/nats/hub-accounts.conf"
        change_mode   = "noop"
      }

      # The accounts' public keys. A change takes effect on the next restart: roll the nodes one by
      # one (docs/operations.md), never all at once.
      template {
        data        = <<-EOT
          {{ with nomadVar "nomad/jobs" -}}
          RENO_PUB_RENO={{ .pub_reno }}
          RENO_PUB_PUBLISHER={{ .pub_publisher }}
          RENO_PUB_AUTHSVC={{ .pub_authsvc }}
          RENO_PUB_LEAF_DEVICES={{ .pub_leaf_devices }}
          RENO_PUB_LEAF_AUTH={{ .pub_leaf_auth }}
          RENO_PUB_SYS={{ .pub_sys }}
          {{ end -}}
        EOT
        destination = "secrets/public-keys.env"
        env         = true
        change_mode = "noop"
      }

      env {
        RENO_LISTEN_HOST      = "${NOMAD_IP_client}"
        RENO_HUB_NAME         = "hub-${node.unique.name}"
        RENO_HUB_LEAF_PORT    = "${NOMAD_PORT_leaf}"
        RENO_HUB_CLUSTER_PORT = "${NOMAD_PORT_cluster}"
        RENO_HUB_ROUTES       = jsonencode([for host in var.hub_hosts : "nats-route://${host}:6222"])
      }

      volume_mount {
        volume      = "jetstream"
        destination = "/data"
      }

      config {
        command = "local/nats-server-v2.14.6-linux-amd64/nats-server"
        args = [
          "-c", "local/nats/hub-cluster.conf",
          "-p", "${NOMAD_PORT_client}",
          "-m", "${NOMAD_PORT_monitor}",
          "-sd", "/data",
        ]
      }

      # nats-server stops on SIGTERM; clients reconnect to the other two nodes.
      kill_signal  = "SIGTERM"
      kill_timeout = "30s"

      resources {
        cpu    = 2000
        memory = 2048
      }
    }
  }
}
