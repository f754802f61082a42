//! Several stacks sharing one interface: the queues dealt to each, the links that hand
//! each other the frames of connections that moved queue, and the directory of the
//! connections their listeners opened.
use crate::stack::{ShardDirectory, Stack};
use crate::tcp::Instant;
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender};

/// How sharded stacks give each other the frames of connections that moved to another
/// stack's queue (see [`Stack::join_shards`]).
pub(crate) struct ShardLink {
    inbox: Receiver<Vec<u8>>,
    /// Every stack's inbox, by index (this one's included, never used).
    peers: Vec<Sender<Vec<u8>>>,
}

/// What the stacks sharing one interface share: the queues dealt to each (queue q to
/// stack q mod N; a flow stays on its queue, so it mostly meets the same stack), the
/// links between them, and the directory of the connections their listeners opened.
pub(crate) struct Shards {
    queues: Vec<u32>,
    links: Vec<Option<ShardLink>>,
    directory: Arc<ShardDirectory>,
}

/// One stack's part of [`Shards`].
pub(crate) struct ShardMember {
    /// Its index among the stacks.
    pub index: usize,
    /// The RX queues it polls.
    pub queues: Vec<u32>,
    /// Its link to the others (see [`super::runtime::Runtime::join_shards`]).
    pub link: ShardLink,
    /// The directory the group shares.
    pub directory: Arc<ShardDirectory>,
}

impl Shards {
    /// `stacks` stacks over the interface's `queues`.
    pub fn new(queues: Vec<u32>, stacks: usize) -> Self {
        Shards {
            queues,
            links: ShardLink::mesh(stacks).into_iter().map(Some).collect(),
            directory: Arc::default(),
        }
    }

    /// Stack `index`'s part (each is taken once).
    pub fn member(&mut self, index: usize) -> ShardMember {
        let stacks = self.links.len();
        ShardMember {
            index,
            queues: self
                .queues
                .iter()
                .copied()
                .filter(|q| *q as usize % stacks == index)
                .collect(),
            link: self.links[index].take().expect("each member is taken once"),
            directory: self.directory.clone(),
        }
    }
}

impl ShardLink {
    /// Links for `n` stacks: each receives from its own inbox and sends to the others'.
    fn mesh(n: usize) -> Vec<ShardLink> {
        let (senders, inboxes): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::channel()).unzip();
        inboxes
            .into_iter()
            .map(|inbox| ShardLink {
                inbox,
                peers: senders.clone(),
            })
            .collect()
    }

    /// Processes what the other stacks handed over, and hands each of this stack's
    /// strays to the stack that owns its connection.
    pub fn exchange(&self, stack: &mut Stack, now: Instant) {
        for frame in self.inbox.try_iter() {
            stack.receive_handed_over(now, &frame);
        }
        for (owner, frame) in stack.take_strays() {
            if let Some(peer) = self.peers.get(owner) {
                let _ = peer.send(frame);
            }
        }
    }
}
