//! Raft RPC transport for a one-node cluster: every RPC fails as unreachable.
//!
//! openraft asks the [`RaftNetworkFactory`] for a client per peer and sends
//! `append_entries`, `vote` and `install_snapshot` through it. A one-node
//! cluster never has a peer, so openraft never calls these; if it ever did
//! (someone added a member by hand), the peer is reported
//! [`Unreachable`] and openraft backs off and retries, which is the honest
//! answer. Multi-node networking (HTTP RPCs between Custos nodes, leader
//! forwarding) arrives with the HA issue and replaces this file.

use std::io;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::TypeConfig;

/// Hands out [`UnreachablePeer`] clients.
#[derive(Debug, Clone, Default)]
pub struct SingleNodeNetwork;

/// A peer that cannot be reached: this build has no inter-node transport.
#[derive(Debug, Clone)]
pub struct UnreachablePeer {
    target: u64,
}

impl UnreachablePeer {
    fn unreachable(&self) -> Unreachable {
        let e = io::Error::other(format!(
            "node {} unreachable: multi-node Raft networking is not available yet",
            self.target
        ));
        Unreachable::new(&e)
    }
}

impl RaftNetworkFactory<TypeConfig> for SingleNodeNetwork {
    type Network = UnreachablePeer;

    async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Self::Network {
        UnreachablePeer { target }
    }
}

impl RaftNetwork<TypeConfig> for UnreachablePeer {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }
}
