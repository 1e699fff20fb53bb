// SPDX-License-Identifier: Apache-2.0
pragma solidity ^0.8.24;

import {AttestationLedger} from "../src/AttestationLedger.sol";
import {RewardPool} from "../src/RewardPool.sol";
import {RewardToken} from "../src/RewardToken.sol";
import {TestBase} from "./utils/TestBase.sol";

/// @notice Fuzz tests of claims: paid once, to the leaf's own account, for the proven round only.
contract RewardPoolTest is TestBase {
    address internal constant COORDINATOR = address(0xC0);
    address internal constant CLIENT = address(0xC1);
    bytes32 internal constant RUN = keccak256("run");
    uint256 internal constant FUNDS = 1e30;

    AttestationLedger internal ledger;
    RewardToken internal token;
    RewardPool internal pool;

    struct Claim {
        bytes32 commitment;
        uint256 score;
        uint256 examples;
        uint256 epsilonMicro;
        uint256 amount;
    }

    function setUp() public {
        ledger = new AttestationLedger(address(this), COORDINATOR);
        token = new RewardToken(address(this), FUNDS);
        pool = new RewardPool(token, ledger);
        token.transfer(address(pool), FUNDS);
    }

    function _leaf(uint64 round, address account, Claim memory c) internal pure returns (bytes32) {
        return leafOf(RUN, round, account, c.commitment, c.score, c.examples, c.epsilonMicro, c.amount);
    }

    /// @dev Post a round whose tree holds CLIENT's leaf and `others` filler leaves; return its proof.
    function _post(uint64 round, Claim memory c, uint256 others) internal returns (bytes32[] memory) {
        bytes32[] memory leaves = new bytes32[](others + 1);
        for (uint256 i = 0; i < others; i++) {
            leaves[i] = keccak256(abi.encode("other", round, i));
        }
        leaves[others] = _leaf(round, CLIENT, c);
        vm.prank(COORDINATOR);
        ledger.postRound(RUN, round, merkleRoot(leaves), keccak256("aggregate"));
        return merkleProof(leaves, others);
    }

    function _claim(address sender, uint64 round, Claim memory c, bytes32[] memory proof) internal {
        vm.prank(sender);
        pool.claim(RUN, round, c.commitment, c.score, c.examples, c.epsilonMicro, c.amount, proof);
    }

    function testFuzz_ClaimPaysOnce(uint64 round, Claim memory c, uint8 others) public {
        c.amount = bound(c.amount, 0, FUNDS);
        bytes32[] memory proof = _post(round, c, others);
        _claim(CLIENT, round, c, proof);
        assertEq(token.balanceOf(CLIENT), c.amount, "wrong payment");
        assertTrue(
            pool.isClaimed(RUN, round, CLIENT, c.commitment, c.score, c.examples, c.epsilonMicro, c.amount),
            "not marked claimed"
        );
        vm.expectRevert(RewardPool.AlreadyClaimed.selector);
        _claim(CLIENT, round, c, proof);
        assertEq(token.balanceOf(CLIENT), c.amount, "paid twice");
        assertEq(token.balanceOf(address(pool)), FUNDS - c.amount, "pool balance not conserved");
    }

    function testFuzz_OtherSenderCannotClaim(address thief, uint64 round, Claim memory c, uint8 others) public {
        vm.assume(thief != CLIENT);
        bytes32[] memory proof = _post(round, c, others);
        vm.expectRevert(RewardPool.InvalidProof.selector);
        _claim(thief, round, c, proof);
        assertEq(token.balanceOf(address(pool)), FUNDS, "pool paid a thief");
    }

    function testFuzz_TamperedFieldFails(uint64 round, Claim memory c, uint8 others, uint8 field, uint256 delta)
        public
    {
        vm.assume(delta != 0);
        bytes32[] memory proof = _post(round, c, others);
        Claim memory forged = Claim(c.commitment, c.score, c.examples, c.epsilonMicro, c.amount);
        field = field % 5;
        unchecked {
            if (field == 0) forged.commitment = bytes32(uint256(forged.commitment) + delta);
            if (field == 1) forged.score += delta;
            if (field == 2) forged.examples += delta;
            if (field == 3) forged.epsilonMicro += delta;
            if (field == 4) forged.amount += delta;
        }
        vm.expectRevert(RewardPool.InvalidProof.selector);
        _claim(CLIENT, round, forged, proof);
    }

    function testFuzz_TamperedProofFails(uint64 round, Claim memory c, uint8 others, uint256 slot, bytes32 junk)
        public
    {
        bytes32[] memory proof = _post(round, c, others);
        vm.assume(proof.length > 0);
        slot = slot % proof.length;
        vm.assume(junk != proof[slot]);
        proof[slot] = junk;
        vm.expectRevert(RewardPool.InvalidProof.selector);
        _claim(CLIENT, round, c, proof);
    }

    function testFuzz_ProofForAnotherRoundFails(uint64 round, uint64 other, Claim memory c, uint8 others) public {
        vm.assume(round != other);
        bytes32[] memory proof = _post(round, c, others);
        // The other round is posted with a tree that does not hold this leaf...
        Claim memory unrelated = Claim(keccak256("unrelated"), 1, 1, 1, 1);
        _post(other, unrelated, others);
        vm.expectRevert(RewardPool.InvalidProof.selector);
        _claim(CLIENT, other, c, proof);
        // ...and an unposted round has no root at all.
        uint64 unposted = 0;
        while (unposted == round || unposted == other) unposted++;
        vm.expectRevert(RewardPool.RoundNotPosted.selector);
        _claim(CLIENT, unposted, c, proof);
    }
}

/// @notice Drives random claims (right and wrong claimant, repeated, tampered) against a
/// fixed set of rounds and records what should have happened.
contract ClaimHandler is TestBase {
    uint256 internal constant ACTORS = 5;
    uint256 internal constant ROUNDS = 3;
    bytes32 internal constant RUN = keccak256("invariant-run");

    RewardPool public immutable pool;
    RewardToken public immutable token;
    bytes32[][] internal _leaves; // per round
    uint256[][] internal _amounts; // per round, per leaf (leaf i belongs to actor i)
    mapping(bytes32 leaf => bool) public ghostClaimed;
    uint256 public ghostPaid;
    uint256 public unexpected;

    constructor(RewardPool pool_, RewardToken token_) {
        pool = pool_;
        token = token_;
        for (uint256 r = 0; r < ROUNDS; r++) {
            bytes32[] memory leaves = new bytes32[](ACTORS);
            uint256[] memory amounts = new uint256[](ACTORS);
            for (uint256 i = 0; i < ACTORS; i++) {
                amounts[i] = 1e18 * (1 + ((r * 7 + i * 3) % 11));
                leaves[i] = leafOf(RUN, uint64(r), actor(i), bytes32(i), i, 100 + i, 1_000_000, amounts[i]);
            }
            _leaves.push(leaves);
            _amounts.push(amounts);
        }
    }

    function runId() external pure returns (bytes32) {
        return RUN;
    }

    function rootOf(uint256 r) external view returns (bytes32) {
        return merkleRoot(_leaves[r]);
    }

    function actor(uint256 i) public pure returns (address) {
        return address(uint160(0xA000 + i));
    }

    function leafCount() external pure returns (uint256 rounds, uint256 perRound) {
        return (ROUNDS, ACTORS);
    }

    function leafAt(uint256 r, uint256 i) external view returns (bytes32) {
        return _leaves[r][i];
    }

    function claim(uint256 roundSeed, uint256 leafSeed, uint256 senderSeed, uint256 proofRoundSeed) external {
        uint256 r = roundSeed % ROUNDS;
        uint256 i = leafSeed % ACTORS;
        address sender = actor(senderSeed % ACTORS);
        uint256 proofRound = proofRoundSeed % ROUNDS; // the proof is built from this round's tree
        bytes32 leaf = _leaves[r][i];
        bool expectPaid = sender == actor(i) && proofRound == r && !ghostClaimed[leaf];
        uint256 before = token.balanceOf(sender);
        bool paid = _tryClaim(sender, r, i, merkleProof(_leaves[proofRound], i));
        if (paid != expectPaid) unexpected++;
        if (paid) {
            if (token.balanceOf(sender) != before + _amounts[r][i]) unexpected++;
            ghostClaimed[leaf] = true;
            ghostPaid += _amounts[r][i];
        }
    }

    function _tryClaim(address sender, uint256 r, uint256 i, bytes32[] memory proof) internal returns (bool) {
        vm.prank(sender);
        try pool.claim(RUN, uint64(r), bytes32(i), i, 100 + i, 1_000_000, _amounts[r][i], proof) {
            return true;
        } catch {
            return false;
        }
    }
}

/// @notice Invariants: only expected claims succeed, every leaf is paid at most once, and the
/// tokens paid out equal the sum of claimed leaves' amounts (balances conserved).
contract RewardPoolInvariantTest is TestBase {
    uint256 internal constant FUNDS = 1e24;
    RewardToken internal token;
    RewardPool internal pool;
    ClaimHandler internal handler;

    function setUp() public {
        AttestationLedger ledger = new AttestationLedger(address(this), address(this));
        token = new RewardToken(address(this), FUNDS);
        pool = new RewardPool(token, ledger);
        handler = new ClaimHandler(pool, token);
        (uint256 rounds,) = handler.leafCount();
        for (uint256 r = 0; r < rounds; r++) {
            ledger.postRound(handler.runId(), uint64(r), handler.rootOf(r), bytes32(r));
        }
        token.transfer(address(pool), FUNDS);
    }

    /// @dev Read by forge: the invariant fuzzer calls only the handler.
    function targetContracts() public view returns (address[] memory targets) {
        targets = new address[](1);
        targets[0] = address(handler);
    }

    function invariant_onlyExpectedClaimsSucceed() public view {
        assertEq(handler.unexpected(), 0, "a claim had an unexpected outcome");
    }

    function invariant_paidEqualsClaimedLeaves() public view {
        uint256 held = 0;
        for (uint256 i = 0; i < 5; i++) {
            held += token.balanceOf(handler.actor(i));
        }
        assertEq(held, handler.ghostPaid(), "actors hold more or less than was claimed");
        assertEq(token.balanceOf(address(pool)) + held, FUNDS, "tokens created or lost");
    }

    function invariant_claimedFlagsMatch() public view {
        (uint256 rounds, uint256 perRound) = handler.leafCount();
        for (uint256 r = 0; r < rounds; r++) {
            for (uint256 i = 0; i < perRound; i++) {
                bool claimed = pool.isClaimed(
                    keccak256("invariant-run"), uint64(r), handler.actor(i), bytes32(i), i, 100 + i, 1_000_000, 0
                );
                assertTrue(!claimed, "isClaimed true for a leaf that is not in any tree");
                assertTrue(
                    handler.ghostClaimed(handler.leafAt(r, i)) == _isClaimed(r, i), "claimed flag differs from model"
                );
            }
        }
    }

    function _isClaimed(uint256 r, uint256 i) internal view returns (bool) {
        uint256 amount = 1e18 * (1 + ((r * 7 + i * 3) % 11));
        return pool.isClaimed(
            keccak256("invariant-run"), uint64(r), handler.actor(i), bytes32(i), i, 100 + i, 1_000_000, amount
        );
    }
}
