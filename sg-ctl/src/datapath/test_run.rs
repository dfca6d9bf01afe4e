//! The programs of one port slot run on frames through
//! `BPF_PROG_TEST_RUN`: the real datapath on the real maps, without
//! traffic.

use std::time::Duration;

use aya::{
    Ebpf,
    maps::{Array, MapData},
    programs::{ProgramError, SchedClassifier, TestRun as _, TestRunOptions, Xdp},
};
use serde::Serialize;
use sg_common::{Direction, TraceRecord, map_names, program_names};

use super::{
    error::{Context as _, DatapathError, Result, require_root},
    load::{self, tc_program, xdp_program},
    pins::Pins,
    sizes::MapSizes,
};

/// What a program did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Forward {
    Pass,
    Drop,
    /// Sent back to the sender: the frame became a reply (REJECT).
    Reply,
}

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const TC_ACT_UNSPEC: i32 = -1;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
const TC_ACT_REDIRECT: i32 = 7;

/// Room for a frame to grow in a test run: an ICMP error's headers.
const TEST_RUN_GROWTH: usize = 64;

/// The programs of one port slot, loaded into the kernel and attached
/// nowhere, run on frames through `BPF_PROG_TEST_RUN`: the real datapath on
/// the real maps, without traffic.
pub struct TestRun {
    ebpf: Ebpf,
}

impl TestRun {
    /// The programs of a slot (`trace`: a tracer of them), to run on
    /// frames; creates the maps if nothing is attached yet.
    pub(super) fn load(pins: &Pins, sizes: &MapSizes, slot: u32, trace: bool) -> Result<TestRun> {
        require_root("running the filter on test frames")?;
        pins.ensure_bpffs()?;
        let mut ebpf = load::instance(pins, sizes, slot, trace)?;
        xdp_program(&mut ebpf)?;
        tc_program(&mut ebpf, program_names::TC)?;
        Ok(TestRun { ebpf })
    }

    /// Runs the program of `direction` on an Ethernet frame (at least 14
    /// bytes, as the kernel requires).
    pub fn run(&self, direction: Direction, frame: &[u8]) -> Result<Forward> {
        self.run_repeated(direction, frame, 1)
            .map(|(forward, _)| forward)
    }

    /// Per program: its name and the instructions the kernel's verifier
    /// went through to accept it.
    pub fn verified_instructions(&self) -> Result<Vec<(&'static str, u32)>> {
        let mut out = Vec::new();
        for name in [program_names::XDP, program_names::TC] {
            let program = self
                .ebpf
                .program(name)
                .expect("the object has both programs");
            let info = program
                .info()
                .context(|| format!("reading the kernel's information on {name}"))?;
            out.push((name, info.verified_instruction_count().unwrap_or(0)));
        }
        Ok(out)
    }

    /// Runs a tracer (see `Datapath::tracer`) on a frame: what the program did, the
    /// frame as it left it, and its record of why.
    pub fn trace(
        &mut self,
        direction: Direction,
        frame: &[u8],
    ) -> Result<(Forward, Vec<u8>, TraceRecord)> {
        let mut record: Array<&mut MapData, TraceRecord> = self
            .ebpf
            .map_mut(map_names::TRACE)
            .expect("the object has the trace map")
            .try_into()
            .context(|| "the trace map has another type".to_string())?;
        record
            .set(0, TraceRecord::UNSET, 0)
            .context(|| "clearing the trace record".to_string())?;
        let (forward, out) = self.run_out(direction, frame)?;
        let record: Array<&MapData, TraceRecord> = self
            .ebpf
            .map(map_names::TRACE)
            .expect("the object has the trace map")
            .try_into()
            .context(|| "the trace map has another type".to_string())?;
        let record = record
            .get(&0, 0)
            .context(|| "reading the trace record".to_string())?;
        Ok((forward, out, record))
    }

    /// Runs the program of `direction` once on a frame; what it did and the
    /// frame as the program left it (the reply, for `Forward::Reply`).
    pub fn run_out(&self, direction: Direction, frame: &[u8]) -> Result<(Forward, Vec<u8>)> {
        let mut out = vec![0; frame.len() + TEST_RUN_GROWTH];
        let (forward, _, len) = self.execute(direction, frame, 1, &mut out)?;
        out.truncate(len);
        Ok((forward, out))
    }

    /// Runs the program `repeat` times on the frame; what it did and the
    /// kernel's measure of the mean time per run.
    pub fn run_repeated(
        &self,
        direction: Direction,
        frame: &[u8],
        repeat: u32,
    ) -> Result<(Forward, Duration)> {
        let mut out = vec![0; frame.len() + TEST_RUN_GROWTH];
        self.execute(direction, frame, repeat, &mut out)
            .map(|(forward, duration, _)| (forward, duration))
    }

    fn execute(
        &self,
        direction: Direction,
        frame: &[u8],
        repeat: u32,
        out: &mut [u8],
    ) -> Result<(Forward, Duration, usize)> {
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            repeat,
            ..TestRunOptions::new()
        };
        let what = || format!("running the {direction:?} program on a test frame");
        let result = match direction {
            Direction::Egress => {
                let program: &Xdp = self.program(program_names::XDP)?;
                program.test_run(opts).context(what)?
            }
            Direction::Ingress => {
                let program: &SchedClassifier = self.program(program_names::TC)?;
                program.test_run(opts).context(what)?
            }
        };
        let forward = match (direction, result.return_value) {
            (Direction::Egress, XDP_PASS) => Forward::Pass,
            (Direction::Egress, XDP_DROP) => Forward::Drop,
            (Direction::Egress, XDP_TX) => Forward::Reply,
            (Direction::Ingress, code) => match code as i32 {
                TC_ACT_UNSPEC | TC_ACT_OK => Forward::Pass,
                TC_ACT_SHOT => Forward::Drop,
                TC_ACT_REDIRECT => Forward::Reply,
                _ => return Err(DatapathError::UnexpectedReturn { direction, code }),
            },
            (_, code) => return Err(DatapathError::UnexpectedReturn { direction, code }),
        };
        Ok((forward, result.duration, result.data_size_out as usize))
    }

    fn program<'a, T>(&'a self, name: &str) -> Result<&'a T>
    where
        &'a T: TryFrom<&'a aya::programs::Program, Error = ProgramError>,
    {
        self.ebpf
            .program(name)
            .expect("the object has both programs")
            .try_into()
            .context(|| format!("the program {name} has another type"))
    }
}
